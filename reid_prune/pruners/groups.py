"""Find which channels must be removed together, by tracing the network with torch.fx.

Removing output channel ``c`` of a conv also removes channel ``c`` everywhere that
tensor flows: the BN after it, every conv or linear that reads it, and, through a
residual ``add``, every other conv that writes into the same sum. We follow channels
through the traced graph with a union-find over *channel spaces*:

* each Conv2d / Linear output opens a new space (the module is a *producer*);
* BatchNorm, activations, pooling, flatten and other per-channel ops pass the
  space through (BatchNorms are recorded as *norms* of the space);
* an elementwise op on two spaced tensors (``add`` of a residual block) unites them;
* a Conv2d / Linear reading a space is a *consumer* (its input channels are cut).

One space is one :class:`ChannelGroup`. A space that meets an operation we do not
understand (concat, view, permute, matmul, a per-channel constant...) is left whole,
with a warning that names the operation, rather than pruned wrongly. So are the
model input and the class logits (the second output of ``forward(x, with_logits=True)``:
one channel per training identity).

Tensor shapes are read from one run of the traced graph on a small zero input in
eval mode without gradients, so BN running statistics are left untouched.

Group naming (stable across calls, and independent of the filters, so plans and
per-group rates can refer to them):

* ``"layer1.0.conv1"``: an *internal* group is named after its producer conv;
* ``"stream.<stages>"``: a *stream* group is named after the stages its producers
  live in, joined with ``+``: ``stream.stem`` (ResNet-50's stem), ``stream.stem+layer1``
  (ResNet-18/34: layer1 has no downsample, so the stem output and layer1's stream are
  one group), ``stream.layer2`` ... ``stream.layer4``, ``stream.embedding`` (the
  optional embedding Linear's output, read by the BNNeck and the classifier).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from inspect import signature
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node, symbolic_trace
from torch.fx.node import map_aggregate

SCOPES = ("internal", "all")


@dataclass
class ChannelGroup:
    """Layers whose channels are removed together; channel ``c`` of the group is channel ``c`` of each.

    Attributes:
        name: ``"layer1.0.conv1"`` for an internal group, ``"stream.layer2"`` etc. for a stream group.
        kind: ``"internal"``: the output of a conv inside a block that only the next conv of
            the same block reads (conv1 of a BasicBlock; conv1, conv2 of a Bottleneck).
            ``"stream"``: everything else that can be cut: a residual stream (several producers
            joined by ``add``), ResNet-50's stem output, or the embedding layer's output.
        producers: modules whose OUTPUT channels are cut (Conv2d weight dim 0, Linear out features).
        norms: every BatchNorm1d/2d applied to these channels, after the producers (``bn1``,
            ``downsample.1``) or after pooling (the BNNeck, ``neck``). Surgery slices their
            features; :func:`~reid_prune.pruners.surgery.zero_group` zeroes their affine
            parameters so a soft-pruned channel is silent all the way to the output.
        consumers: Conv2d / Linear modules whose INPUT channels are cut (weight dim 1).
        channels: current number of channels.
        stage: ``+``-joined top-level stages of the producers: ``"layer1"``, ``"stem+layer1"``,
            ``"embedding"``. Producers at the root that read the model input are the ``"stem"``.
        is_stem: a producer reads the model input (the first conv).
        has_downsample: a producer is a shortcut conv (its name has a ``downsample`` part).
        is_last_stage: the channels reach the model output or are read by a Linear after
            pooling: the last stage's stream and the embedding output. Pruning them changes
            the re-ID feature itself.
    """

    name: str
    kind: str
    producers: list[str]
    norms: list[str]
    consumers: list[str]
    channels: int
    stage: str
    is_stem: bool = False
    has_downsample: bool = False
    is_last_stage: bool = False


class _Space:
    """What the trace learned about one channel space (merged into the root on union)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.producers: list[str] = []
        self.norms: list[str] = []
        self.consumers: list[str] = []
        self.blocked: list[str] = []  # reasons the space must stay whole
        self.summed = False  # joined to another space (or itself) by an elementwise op
        self.reaches_output = False
        self.is_logits = False

    def absorb(self, other: _Space) -> None:
        self.producers += other.producers
        self.norms += other.norms
        self.consumers += other.consumers
        self.blocked += other.blocked
        self.reaches_output |= other.reaches_output
        self.is_logits |= other.is_logits


class _Spaces:
    """Union-find over channel spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.info: list[_Space] = []

    def new(self, channels: int, blocked: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.info.append(_Space(channels))
        if blocked:
            self.info[-1].blocked.append(blocked)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        i, j = self.find(i), self.find(j)
        if i != j:
            if self.info[i].channels != self.info[j].channels:
                raise RuntimeError(
                    f"channel spaces of {self.info[i].channels} and {self.info[j].channels} channels are joined"
                )
            self.parent[j] = i
            self.info[i].absorb(self.info[j])
        self.info[i].summed = True
        return i

    def __getitem__(self, i: int) -> _Space:
        return self.info[self.find(i)]


# Ops that act on each channel separately, keeping dim 1: they pass the space through.
# Binary elementwise ops among them unite the spaces of their spaced operands.
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten,
)
_CHANNELWISE_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, operator.neg, torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.relu_,
    torch.sigmoid, torch.tanh, torch.clamp, torch.pow, torch.sqrt, torch.abs, torch.exp, torch.log, torch.flatten,
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.gelu, F.silu, F.hardswish, F.dropout, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}
_CHANNELWISE_METHODS = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "relu", "relu_", "sigmoid", "tanh", "clamp",
    "clamp_", "clamp_min", "clamp_min_", "pow", "pow_", "sqrt", "abs", "exp", "log", "flatten", "contiguous",
}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)  # per-channel layers that surgery slices


class _ShapeRecorder(Interpreter):
    """Runs a traced graph once and keeps each node's output shape (tensors only)."""

    def __init__(self, gm: GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[Node, tuple[int, ...]] = {}

    def run_node(self, n: Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, Tensor):
            self.shapes[n] = tuple(result.shape)
        return result


def example_input(model: nn.Module, input_size: tuple[int, int]) -> Tensor:
    """A (1, C, H, W) zero image on the model's device and dtype; C is the first conv's input channels."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    param = next(model.parameters())
    channels = first_conv.in_channels if first_conv is not None else 3
    return torch.zeros(1, channels, *input_size, dtype=param.dtype, device=param.device)


@contextmanager
def inspection_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients, so a probing forward leaves BN statistics alone; modes are restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _trace(model: nn.Module, input_size: tuple[int, int]) -> tuple[GraphModule, dict[Node, tuple[int, ...]]]:
    """Trace ``model`` (with logits, when its forward takes ``with_logits``) and record node shapes."""
    concrete = {"with_logits": True} if "with_logits" in signature(model.forward).parameters else None
    gm = symbolic_trace(model, concrete_args=concrete)
    recorder = _ShapeRecorder(gm)
    with inspection_mode(model):  # the traced graph shares the model's modules
        recorder.run(example_input(model, input_size), *(concrete or {}).values())
    return gm, recorder.shapes


def _stage_of(name: str, stem_modules: set[str]) -> str:
    if "." in name:
        return name.split(".")[0]
    return "stem" if name in stem_modules else name


class _ChannelTracer:
    """Walks a traced graph once, assigning each tensor node the channel space of its dim 1."""

    def __init__(self, gm: GraphModule, shapes: dict[Node, tuple[int, ...]]) -> None:
        self.gm = gm
        self.shapes = shapes
        self.spaces = _Spaces()
        self.space_of: dict[Node, int] = {}
        self.module_space: dict[tuple[str, str], int] = {}  # (role, module) -> space: shared modules join
        self.opened: list[int] = []  # spaces in order of their first producer
        self.order: dict[str, int] = {}  # module -> position of its first call, to list members in forward order
        self.input_space: int | None = None

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            spaced = [n for n in node.all_input_nodes if n in self.space_of]
            if node.op == "placeholder":
                if self._channels(node) is not None:
                    self.input_space = self._new_output(node, "it is the model input")
            elif node.op == "output":
                self._mark_outputs(node)
            elif node.op == "call_module":
                self._module(node, spaced)
            elif node.op in ("call_function", "call_method"):
                known = _CHANNELWISE_FUNCTIONS if node.op == "call_function" else _CHANNELWISE_METHODS
                if node.target in known:
                    self._channelwise(node, spaced)
                elif spaced:
                    what = getattr(node.target, "__name__", str(node.target))
                    self._block(spaced, f"it is read by {what!r}, which is not known to keep channels apart")
                    self._new_output(node, f"it is produced by {what!r}")
            # get_attr nodes (parameters, constants) carry no channel space of their own.

    def _channels(self, node: Node) -> int | None:
        shape = self.shapes.get(node)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def _block(self, nodes: list[Node], reason: str) -> None:
        for n in nodes:
            self.spaces[self.space_of[n]].blocked.append(reason)

    def _new_output(self, node: Node, blocked: str | None = None) -> int | None:
        c = self._channels(node)
        if c is None:
            return None
        self.space_of[node] = self.spaces.new(c, blocked=blocked)
        return self.space_of[node]

    def _attach(self, role: str, name: str, space: int) -> _Space:
        """Record ``name`` in ``role`` on ``space``; a module used on two spaces joins them."""
        if (role, name) in self.module_space:
            space = self.spaces.union(self.module_space[(role, name)], space)
        self.module_space[(role, name)] = space
        self.order.setdefault(name, len(self.order))
        info = self.spaces[space]
        members = {"producer": info.producers, "norm": info.norms, "consumer": info.consumers}[role]
        if name not in members:
            members.append(name)
        return info

    def _mark_outputs(self, node: Node) -> None:
        outputs: list[Node] = []
        map_aggregate(node.args[0], lambda a: outputs.append(a) if isinstance(a, Node) else None)
        for i, out in enumerate(outputs):
            if out in self.space_of:
                info = self.spaces[self.space_of[out]]
                info.reaches_output = True
                # forward(x, with_logits=True) returns (feature, logits): logits are one channel per identity.
                info.is_logits |= i > 0

    def _module(self, node: Node, spaced: list[Node]) -> None:
        name = str(node.target)
        module = self.gm.get_submodule(name)
        kind = type(module).__name__
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise NotImplementedError(
                    f"{name} is a grouped/depthwise convolution (groups={module.groups}); "
                    "channel groups are only derived for groups=1 convolutions"
                )
            in_shape = self.shapes.get(node.args[0])
            if isinstance(module, nn.Linear) and in_shape is not None and len(in_shape) != 2:
                # A Linear on a (B, ..., F) tensor mixes the last dim, not dim 1.
                self._block(spaced, f"{name} applies a Linear to a {len(in_shape)}-D tensor")
                self._new_output(node, f"it is produced by {name} from a {len(in_shape)}-D tensor")
                return
            if spaced:
                self._attach("consumer", name, self.space_of[spaced[0]])
            space = self._new_output(node)
            if space is not None:
                self._attach("producer", name, space)
                self.opened.append(space)
        elif isinstance(module, NORMS) and spaced:
            self._attach("norm", name, self.space_of[spaced[0]])
            self.space_of[node] = self.space_of[spaced[0]]
        elif isinstance(module, _CHANNELWISE_MODULES):
            self._channelwise(node, spaced)
        elif spaced:
            self._block(spaced, f"it is read by {name} ({kind}), which is not channel-wise")
            self._new_output(node, f"it is produced by {name} ({kind})")

    def _channelwise(self, node: Node, spaced: list[Node]) -> None:
        """Pass the space of a per-channel op through; elementwise ops unite their spaced operands."""
        if not spaced:
            return
        c = self.spaces[self.space_of[spaced[0]]].channels
        out = self._channels(node)
        what = getattr(node.target, "__name__", str(node.target))
        if out != c:
            self._block(spaced, f"{what!r} turns its {c} channels into {out}")
            self._new_output(node, f"it is produced by {what!r}, which reshapes channels")
            return
        for other in node.all_input_nodes:
            other_c = self._channels(other)
            if other not in self.space_of and other_c is not None and other_c != 1:
                # A per-channel constant is not a layer that surgery could slice.
                self._block(spaced, f"{what!r} combines it with a per-channel tensor that cannot be sliced")
                self._new_output(node, f"it is produced by {what!r} with an unsliceable operand")
                return
        space = self.space_of[spaced[0]]
        for other in spaced[1:]:
            space = self.spaces.union(space, self.space_of[other])
        self.space_of[node] = space


def find_channel_groups(
    model: nn.Module,
    *,
    scope: str = "internal",
    include_stem: bool = True,
    include_downsample: bool = True,
    include_last_stage: bool = False,
    input_size: tuple[int, int] = (64, 32),
) -> list[ChannelGroup]:
    """The prunable channel groups of ``model``, in forward order.

    Args:
        model: a network of Conv2d / Linear / BatchNorm layers that torch.fx can trace,
            e.g. a :func:`~reid_prune.build_model` ResNet (with or without neck, embedding,
            classifier). Already-pruned models work too: groups report current widths.
        scope: ``"internal"``: only the convs inside blocks whose output does not feed a
            residual sum, so every stage keeps its width. ``"all"``: these plus the
            stream groups (residual streams, stem, embedding), filtered by the flags below.
        include_stem: keep stream groups fed by the first conv (``is_stem``).
        include_downsample: keep stream groups that contain a shortcut conv (``has_downsample``).
        include_last_stage: keep stream groups that reach the re-ID feature (``is_last_stage``:
            the last stage's stream, and the embedding output when there is one). Off by
            default: pruning them shrinks the feature the retrieval uses.
        input_size: (H, W) of the zero image used to read tensor shapes; any size the
            network accepts.

    Returns:
        ``list[ChannelGroup]``. Spaces that cannot be pruned are left out; those that have
        producers are reported with a ``UserWarning`` naming the reason.

    Raises:
        ValueError: unknown ``scope``.
        NotImplementedError: the model has grouped or depthwise convolutions.
    """
    if scope not in SCOPES:
        raise ValueError(f"pruning scope: expected one of {list(SCOPES)}, got {scope!r}")
    gm, shapes = _trace(model, input_size)
    tracer = _ChannelTracer(gm, shapes)
    tracer.run()
    spaces = tracer.spaces
    # Producers reading the model input are the stem.
    stem_modules = set(spaces[tracer.input_space].consumers) if tracer.input_space is not None else set()

    groups: list[ChannelGroup] = []
    seen: set[int] = set()
    taken: set[str] = set()
    for space_id in tracer.opened:
        root = spaces.find(space_id)
        if root in seen:
            continue
        seen.add(root)
        space = spaces.info[root]
        for members in (space.producers, space.norms, space.consumers):
            members.sort(key=tracer.order.__getitem__)
        if space.is_logits:  # class scores: one channel per training identity, never pruned
            continue
        if space.blocked:
            warnings.warn(
                f"channels produced by {space.producers} are left unpruned: {'; '.join(space.blocked)}",
                stacklevel=2,
            )
            continue
        group = _make_group(model, space, stem_modules)
        if group.name in taken:  # two streams in the same stages: name the later one by its first producer
            group.name = f"stream.{group.producers[0]}"
        taken.add(group.name)
        if _selected(group, scope, include_stem, include_downsample, include_last_stage):
            groups.append(group)
    return groups


def _make_group(model: nn.Module, space: _Space, stem_modules: set[str]) -> ChannelGroup:
    producer = space.producers[0]
    parent = producer.rpartition(".")[0]
    local = all(n.startswith(parent + ".") for n in space.norms + space.consumers)
    internal = (
        len(space.producers) == 1
        and isinstance(model.get_submodule(producer), nn.Conv2d)
        and not space.summed
        and not space.reaches_output
        and bool(parent)
        and local
    )
    stages: list[str] = []
    for name in space.producers:
        stage = _stage_of(name, stem_modules)
        if stage not in stages:
            stages.append(stage)
    stage = "+".join(stages)
    return ChannelGroup(
        name=producer if internal else f"stream.{stage}",
        kind="internal" if internal else "stream",
        producers=list(space.producers),
        norms=list(space.norms),
        consumers=list(space.consumers),
        channels=space.channels,
        stage=stage,
        is_stem=any(p in stem_modules for p in space.producers),
        has_downsample=any("downsample" in p.split(".") for p in space.producers),
        is_last_stage=not internal
        and (space.reaches_output or any(isinstance(model.get_submodule(c), nn.Linear) for c in space.consumers)),
    )


def _selected(group: ChannelGroup, scope: str, include_stem: bool, include_downsample: bool,
              include_last_stage: bool) -> bool:
    if group.kind == "internal":
        return True
    if scope == "internal":
        return False
    return (
        (include_stem or not group.is_stem)
        and (include_downsample or not group.has_downsample)
        and (include_last_stage or not group.is_last_stage)
    )
