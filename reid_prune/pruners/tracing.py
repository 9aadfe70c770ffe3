"""The torch.fx channel tracer behind :func:`~reid_prune.pruners.groups.find_channel_groups`.

It traces a model, records each node's output shape from one probing forward
(:func:`inspection_mode`, :func:`example_input`), and walks the graph once with
:class:`_ChannelTracer`, a union-find over *channel spaces* (:class:`_Spaces`). Which
spaces become which :class:`~reid_prune.pruners.groups.ChannelGroup`, and under what
names, is decided in :mod:`.groups`; this module only follows channels through the graph.
The rules it follows are described in that module's docstring.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from contextlib import contextmanager
from inspect import signature
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node, Tracer
from torch.fx.node import map_aggregate

from ..layers import NORM, PRODUCER, kind_of
# NORMS is re-exported through .groups, which defined it before reid_prune.layers held the layer table.
from ..layers import NORMS as NORMS


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


class _LayerTracer(Tracer):
    """torch.fx's tracer, keeping every layer type of :mod:`reid_prune.layers` whole.

    torch.fx keeps torch.nn's own modules as ``call_module`` nodes but traces into any other
    module, so a registered layer type defined outside torch.nn would reach the channel
    tracer as loose tensor ops that it cannot prune.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return kind_of(m) is not None or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, input_size: tuple[int, int]) -> tuple[GraphModule, dict[Node, tuple[int, ...]]]:
    """Trace ``model`` (with logits, when its forward takes ``with_logits``) and record node shapes."""
    concrete = {"with_logits": True} if "with_logits" in signature(model.forward).parameters else None
    tracer = _LayerTracer()
    gm = GraphModule(model, tracer.trace(model, concrete_args=concrete), type(model).__name__)
    recorder = _ShapeRecorder(gm)
    with inspection_mode(model):  # the traced graph shares the model's modules
        recorder.run(example_input(model, input_size), *(concrete or {}).values())
    return gm, recorder.shapes


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
        layer = kind_of(module)
        if layer is not None and layer.role == PRODUCER:
            n_groups = layer.geometry(module)[0]
            if n_groups != 1:
                raise NotImplementedError(
                    f"{name} is a grouped/depthwise convolution (groups={n_groups}); "
                    "channel groups are only derived for groups=1 convolutions"
                )
            in_shape = self.shapes.get(node.args[0])
            if layer.channels_dim != 1 and in_shape is not None and len(in_shape) != 2:
                # A layer reading channels from the last dim (a Linear) on a (B, ..., F) tensor mixes F, not dim 1.
                self._block(spaced, f"{name} applies a {kind} to a {len(in_shape)}-D tensor")
                self._new_output(node, f"it is produced by {name} from a {len(in_shape)}-D tensor")
                return
            if spaced:
                self._attach("consumer", name, self.space_of[spaced[0]])
            space = self._new_output(node)
            if space is not None:
                self._attach("producer", name, space)
                self.opened.append(space)
        elif layer is not None and layer.role == NORM and spaced:
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
