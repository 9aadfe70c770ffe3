"""Find which channels must be removed together, by tracing the network with torch.fx.

Removing output channel ``c`` of a conv also removes channel ``c`` everywhere that
tensor flows: the BN after it, every conv or linear that reads it, and, through a
residual ``add``, every other conv that writes into the same sum. We follow channels
through the traced graph with a union-find over *channel spaces* (:mod:`.tracing`):

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

import warnings
from dataclasses import dataclass

from torch import nn

# NORMS, example_input and inspection_mode are defined in .tracing and re-exported here,
# where they were defined before the tracer had a module of its own.
from .tracing import NORMS, _ChannelTracer, _Space, _trace, example_input, inspection_mode

__all__ = ["NORMS", "SCOPES", "ChannelGroup", "example_input", "find_channel_groups", "inspection_mode"]

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


def _stage_of(name: str, stem_modules: set[str]) -> str:
    if "." in name:
        return name.split(".")[0]
    return "stem" if name in stem_modules else name


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
