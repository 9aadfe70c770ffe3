"""FPGM: Filter Pruning via Geometric Median (He et al., CVPR 2019).

Score of filter j: sum over the other filters k of ||W_j - W_k||_2, on the raw
weights as in the reference code (he-y/filter-pruning-geometric-median,
``get_filter_similar``). Filters with the smallest sum lie nearest the layer's
geometric median, so they are the most replaceable and are pruned first.

``mode="hard"`` cuts once (then fine-tune). ``mode="soft"`` (the paper's setting)
zeroes the selected filters after every training epoch and removes them at the
end; ``mask_gradients`` (default on, as in the reference ImageNet script) keeps
them at zero between epochs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, Pruner, SoftPruner, register


@register
class FPGMPruner(SoftPruner):
    name = "fpgm"
    requires = "weights"
    options = {"mode": "hard", "mask_gradients": True}
    description = "distance to the geometric median, hard or soft (He et al. 2019)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.opts["mode"] not in ("hard", "soft"):
            raise ValueError(f"fpgm option mode: expected 'hard' or 'soft', got {self.opts['mode']!r}")
        self.requires = "training" if self.opts["mode"] == "soft" else "weights"

    def group_scores(self, model: nn.Module, context: PruneContext) -> dict[str, Tensor]:
        scores = {}
        for g in self.groups:
            filters = self.group_filters(model, g).double()
            scores[g.name] = torch.cdist(filters, filters).sum(dim=1)
        return scores

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        if self.opts["mode"] == "soft":
            return super().prune(model, context)  # explains how to run a training-time method
        return Pruner.prune(self, model, context)
