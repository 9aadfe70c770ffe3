"""The MACs and parameters of a network under any per-group channel counts, without running it again.

:class:`CostModel` records each layer's geometry once, with forward hooks at the given
input size, so the MACs and parameters of the network under any per-group keep counts
are sums of products. Conventions (docs/architecture.md, "Complexity conventions"): MACs
are the multiply-accumulates of the Conv2d and Linear layers run by the retrieval forward
``model(x)`` for one image (FLOPs = 2 x MACs); parameters are all ``model.parameters()``,
trainable or not, including layers the retrieval forward does not run (the classifier).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from ..layers import PRODUCER, kind_of
from .groups import ChannelGroup, find_channel_groups
from .tracing import example_input, inspection_mode


@dataclass
class LayerCost:
    """Geometry of one Conv2d / Linear / BatchNorm layer (a producer or norm of :mod:`reid_prune.layers`).

    ``macs = out_channels * in_channels / groups * per_pair`` and
    ``params = out_channels * in_channels / groups * kernel + bias * out_channels`` for
    convs and linears, where ``per_pair`` is kh * kw * H_out * W_out (conv) or the number
    of output positions, 1 for a (B, F) input (linear), and 0 for layers the forward does
    not run. Norms have ``params = 2 * channels`` when affine and no MACs.
    ``out_group`` / ``in_group`` name the channel groups that set the widths (None: fixed).
    ``in_shape`` is the shape of one image's input to the layer without the batch dimension,
    e.g. (C, H, W) for a conv; () for layers the forward does not run and for norms.
    """

    name: str
    out_channels: int
    in_channels: int
    groups: int
    kernel: int
    per_pair: int
    bias: bool
    out_group: str | None = None
    in_group: str | None = None
    is_norm: bool = False
    in_shape: tuple[int, ...] = ()


class CostModel:
    """MACs and parameters of ``model`` under any per-group channel counts, without re-running it.

    Args:
        model: the network (any width); its current widths are the reference.
        input_size: (H, W) of the image the MACs are counted at.
        groups: the channel groups keep counts may name; by default every prunable group
            (``find_channel_groups(model, scope="all", include_last_stage=True)``), which is a
            superset of the groups found with any filter.

    Example::

        cost = CostModel(model, (256, 128))
        cost.macs()                              # the model as it is
        cost.macs({"layer1.0.conv1": 32})        # with layer1.0.conv1 cut to 32 channels
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int] = (256, 128),
                 groups: Sequence[ChannelGroup] | None = None) -> None:
        if groups is None:
            groups = find_channel_groups(model, scope="all", include_last_stage=True)
        self.input_size = tuple(input_size)
        self.channels = {g.name: g.channels for g in groups}
        positions, in_shapes = _run_shapes(model, self.input_size)
        out_group, in_group = {}, {}
        for g in groups:
            out_group.update(dict.fromkeys(g.producers + g.norms, g.name))
            in_group.update(dict.fromkeys(g.consumers, g.name))
        self.layers: list[LayerCost] = []
        counted = 0
        for name, m in model.named_modules():
            kind = kind_of(m)
            if kind is None:
                continue
            if kind.role == PRODUCER:
                out_c, in_c = kind.widths(m)
                n_groups, kernel = kind.geometry(m)
                layer = LayerCost(
                    name=name,
                    out_channels=out_c,
                    in_channels=in_c,
                    groups=n_groups,
                    kernel=kernel,
                    per_pair=kernel * positions.get(name, 0),
                    bias=m.bias is not None,
                    out_group=out_group.get(name),
                    in_group=in_group.get(name),
                    in_shape=in_shapes.get(name, ()),
                )
            elif m.affine:  # a norm (BatchNorm's interface): a weight and a bias per channel
                (channels,) = kind.widths(m)
                layer = LayerCost(name, out_channels=channels, in_channels=1, groups=1, kernel=0, per_pair=0,
                                  bias=True, out_group=out_group.get(name), is_norm=True)
            else:
                continue
            self.layers.append(layer)
            counted += sum(p.numel() for p in m.parameters(recurse=False))
        # Parameters outside convs, linears and affine norms (e.g. GeM's p) never change.
        self.fixed_params = sum(p.numel() for p in model.parameters()) - counted

    def widths(self, layer: LayerCost, keep_counts: Mapping[str, int]) -> tuple[int, int]:
        """(out, in) channels of ``layer`` with ``keep_counts`` {group: channels kept} (others: as now)."""
        out_c = keep_counts.get(layer.out_group, layer.out_channels) if layer.out_group else layer.out_channels
        in_c = keep_counts.get(layer.in_group, layer.in_channels) if layer.in_group else layer.in_channels
        return out_c, in_c

    def check(self, keep_counts: Mapping[str, int] | None) -> Mapping[str, int]:
        """``keep_counts`` ({} for None) after checking its group names and counts; raises ValueError."""
        keep_counts = keep_counts or {}
        unknown = sorted(set(keep_counts) - set(self.channels))
        if unknown:
            raise ValueError(f"keep counts name unknown groups {unknown[:5]}; known: {sorted(self.channels)[:8]} ...")
        for name, k in keep_counts.items():
            if not 1 <= k <= self.channels[name]:
                raise ValueError(f"group {name!r} keeps {k} channels; expected 1..{self.channels[name]}")
        return keep_counts

    def macs(self, keep_counts: Mapping[str, int] | None = None) -> int:
        """Conv and linear MACs for one image with ``keep_counts`` {group: channels kept} (others: as now)."""
        keep_counts = self.check(keep_counts)
        total = 0
        for layer in self.layers:
            if layer.per_pair:
                out_c, in_c = self.widths(layer, keep_counts)
                total += out_c * (in_c // layer.groups) * layer.per_pair
        return total

    def params(self, keep_counts: Mapping[str, int] | None = None) -> int:
        """Number of parameters with ``keep_counts`` {group: channels kept} (others: as now)."""
        keep_counts = self.check(keep_counts)
        total = self.fixed_params
        for layer in self.layers:
            out_c, in_c = self.widths(layer, keep_counts)
            if layer.is_norm:
                total += 2 * out_c
            else:
                total += out_c * (in_c // layer.groups) * layer.kernel + (out_c if layer.bias else 0)
        return total


def _run_shapes(model: nn.Module, input_size: tuple[int, int]) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """Output positions per channel and input shapes of the convs and linears run by ``model(x)``, batch 1.

    Positions: H_out * W_out for a conv; the output size over ``out_features`` for a linear
    (1 for (B, F)). Input shapes: one image's input without the batch dimension. Runs in
    eval mode without gradients (:func:`~reid_prune.pruners.tracing.inspection_mode`).

    Returns:
        ({layer name: positions}, {layer name: input shape}).
    """
    positions: dict[str, int] = {}
    in_shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, m in model.named_modules():
        kind = kind_of(m)
        if kind is not None and kind.role == PRODUCER:
            channels = kind.widths(m)[0]

            def hook(module, inputs, output, name=name, channels=channels):
                positions[name] = positions.get(name, 0) + output.numel() // channels
                in_shapes[name] = tuple(inputs[0].shape[1:])

            handles.append(m.register_forward_hook(hook))
    try:
        with inspection_mode(model):
            model(example_input(model, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return positions, in_shapes
