"""Entropy of each channel's pooled activation over images (Luo & Wu, arXiv 1706.05791, Sec. 3).

A channel whose response hardly changes from image to image carries little information.
For the n images of the context's batches, each channel's activation (B, C, H, W) is
global-average-pooled to one value per image; the n values are put into ``bins``
equal-width bins spanning the channel's own [min, max], and the channel scores the
entropy of that histogram::

    p_i = (images in bin i) / n,      H_j = - sum_i p_i log p_i      (natural log)

A channel constant over the images has H = 0 (all images in one bin).

**Where the activation is read.** The paper uses the layer's output after ReLU. We read
the input of the group's consumer conv, which in a torchvision ResNet is exactly
ReLU(BN(conv)): what the next layer sees. A residual-stream channel is a sum of several
producers and the identity, read at every block, with no single activation whose entropy
the paper defines: the method file limits entropy to scope ``internal``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import ContextManager

import torch
from torch import Tensor, nn

from ..groups import ChannelGroup
from .base import Criterion, PruneContext


class Entropy(Criterion):
    """Histogram entropy of pooled activations over images; ``bins`` is m in the paper."""

    name = "entropy"
    needs_data = True
    normalizer = "none"  # every group's entropies are in nats over the same number of bins

    def __init__(self, bins: int = 20) -> None:
        self.bins = bins

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        """Entropy (float64, CPU) of every channel of every group, all read in one pass per batch."""
        pooled = pooled_activations(model, groups, context.batches(f"criterion {self.name!r}"), context.autocast)
        return {name: channel_entropy(values, self.bins) for name, values in pooled.items()}


class _Enough(Exception):
    """Raised by a hook once every requested activation of a batch is read: the rest of the forward is skipped."""


def pooled_activations(model: nn.Module, groups: Sequence[ChannelGroup],
                       batches: Sequence[tuple[Tensor, Tensor]],
                       autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, Tensor]:
    """Global-average-pooled activation of each group per image: {group: (images, channels)}.

    The activation is the input of the group's first consumer (for an internal ResNet
    group, ReLU(BN(conv))), read in eval mode without gradients, with the forward passes
    under ``autocast()`` (the run's precision); the pooled values are kept in float64.
    """
    pooled: dict[str, list[Tensor]] = {g.name: [] for g in groups}
    pending: set[str] = set()

    def read(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]  # (B, C, H, W), or (B, C) for a Linear consumer
            per_image = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
            pooled[name].append(per_image.double().cpu())
            pending.discard(name)
            if not pending:
                raise _Enough
        return hook

    handles = [model.get_submodule(g.consumers[0]).register_forward_pre_hook(read(g.name)) for g in groups]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            for images, _ in batches:
                pending.update(pooled)
                try:
                    model(images)
                except _Enough:
                    pass
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in pooled.items()}


def channel_entropy(values: Tensor, bins: int) -> Tensor:
    """Entropy of each column's histogram: (n, C) -> (C,), float64.

    Column j is binned into ``bins`` equal-width bins from its min to its max (the last bin
    includes the max, as numpy.histogram); a constant column has entropy 0.
    """
    values = values.double()
    n, channels = values.shape
    low, high = values.min(dim=0).values, values.max(dim=0).values
    fractions = torch.arange(bins + 1, dtype=torch.float64) / bins
    edges = low[:, None] + (high - low)[:, None] * fractions  # (C, bins + 1)
    index = torch.searchsorted(edges, values.t().contiguous(), right=True) - 1
    index = index.clamp(0, bins - 1)  # the max itself falls in the last bin
    counts = torch.zeros(channels, bins, dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    return torch.special.entr(counts / n).sum(dim=1) + 0.0  # entr(p) = -p log p; + 0.0 turns -0.0 into 0.0
