"""Criteria read from the weights alone: filter norms (L1, L2), distance to the geometric median, random.

For a residual-stream group a channel is written by several producers (each block's last
conv and the shortcut conv); by default a criterion sees their filters side by side
(:func:`~.base.group_filters`).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..groups import ChannelGroup
from .base import Criterion, PruneContext, Selection, group_filters, keep_top


class L1Norm(Criterion):
    """Sum of absolute filter weights, s_j = sum |W_j| (Li et al., ICLR 2017, Sec. 3.1).

    Args:
        shortcut_decides: on a residual stream with a projection shortcut, score the channels
            by the shortcut conv's filters alone (Li et al., Sec. 3.3: the identity maps
            matter more than the residuals, so the shortcut's pruning decides them). Streams
            without a projection (ResNet-18/34's first stage) use every producer's filters.
        greedy: the paper's greedy strategy (Sec. 3.3): when a layer is scored, the kernels
            that read feature maps already removed from an earlier group do not count.
            Groups are scored in forward order.
    """

    name = "l1"

    def __init__(self, *, shortcut_decides: bool = False, greedy: bool = False) -> None:
        self.shortcut_decides, self.greedy = shortcut_decides, greedy

    def scorers(self, group: ChannelGroup) -> list[str]:
        """The producers whose filters score the group."""
        shortcuts = [p for p in group.producers if "downsample" in p.split(".")]
        return shortcuts if self.shortcut_decides and shortcuts else list(group.producers)

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        return {g.name: group_filters(model, g, self.scorers(g)).abs().sum(dim=1) for g in groups}

    def select(self, model: nn.Module, groups: Sequence[ChannelGroup], counts: Mapping[str, int],
               context: PruneContext, scores: Mapping[str, Tensor] | None = None) -> Selection:
        if not self.greedy:
            return super().select(model, groups, counts, context, scores)
        reads = {c: g.name for g in groups for c in g.consumers}  # conv -> the group its input channels belong to
        plan: dict[str, list[int]] = {}
        for g in groups:
            rows = []
            for producer in self.scorers(g):
                weight = model.get_submodule(producer).weight.detach()
                source = reads.get(producer)
                if source in plan:  # kernels on maps removed earlier do not count
                    weight = weight[:, plan[source]]
                rows.append(weight.flatten(1).abs().sum(dim=1))
            plan[g.name] = keep_top(torch.stack(rows).sum(dim=0), counts[g.name])
        return Selection(plan)


class L2Norm(Criterion):
    """L2 norm of each channel's filters (SFP, He et al., IJCAI 2018)."""

    name = "l2"

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        return {g.name: group_filters(model, g).norm(p=2, dim=1) for g in groups}


class GeometricMedian(Criterion):
    """FPGM (He et al., CVPR 2019): s_j = sum over k of ||W_j - W_k||_2 on the raw filters.

    The reference (he-y/filter-pruning-geometric-median, ``get_filter_similar``) prunes the
    filters with the smallest sum: they lie nearest the geometric median, so the others
    can stand in for them.
    """

    name = "geometric_median"

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        out = {}
        for g in groups:
            filters = group_filters(model, g).double()
            out[g.name] = torch.cdist(filters, filters).sum(dim=1)
        return out


class RandomScores(Criterion):
    """Uniform random scores, the control every pruning comparison needs.

    Each group's scores come from a generator seeded by ``seed`` and the group's name, so a
    choice does not depend on which other groups are scored, and repeats exactly.
    """

    name = "random"
    normalizer = "none"  # uniform in [0, 1) in every group: already comparable

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        out = {}
        for g in groups:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(g.name.encode()))
            out[g.name] = torch.rand(g.channels, generator=generator, dtype=torch.float64)
        return out


def channel_parameters(model: nn.Module, group: ChannelGroup) -> list[Tensor]:
    """The trainable parameters that write the group's channels, each with channels on dim 0.

    Producer weights (C, ...) and biases (C,), and the affine weight and bias (C,) of every
    norm on the group. Frozen parameters (the BNNeck's bias) are left out. The BN affine
    parameters belong here because conv -> BN is scale-invariant: the conv filter alone
    neither measures nor silences a channel.
    """
    params = []
    for name in list(group.producers) + list(group.norms):
        module = model.get_submodule(name)
        for param in (module.weight, getattr(module, "bias", None)):
            if param is not None and param.requires_grad:
                params.append(param)
    return params


def channel_norms(model: nn.Module, group: ChannelGroup, p: int, channels: Sequence[int] | None = None) -> Tensor:
    """Per-channel ``sum |w|^p`` (p = 1: L1 norm, p = 2: squared L2 norm) over :func:`channel_parameters`.

    Differentiable. Returns (group.channels,), or (len(channels),) for the listed channels only.
    """
    total = 0
    for param in channel_parameters(model, group):
        if channels is not None:
            param = param.index_select(0, torch.as_tensor(channels, dtype=torch.long, device=param.device))
        rows = param.reshape(param.shape[0], -1)
        total = total + (rows.pow(2) if p == 2 else rows.abs()).sum(dim=1)
    return total


class ChannelL1(Criterion):
    """L1 norm of every trainable parameter that writes a channel (conv filter, bias, BN scale and shift)."""

    name = "channel_l1"

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        with torch.no_grad():
            return {g.name: channel_norms(model, g, 1) for g in groups}
