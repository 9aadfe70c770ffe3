"""PSFP: Progressive Soft Filter Pruning (He et al., arXiv 1808.07471; SFP, IJCAI 2018).

After every training epoch the filters with the smallest L2 norm are zeroed (conv
filter and BN affine, so the channel is silent) and training goes on: a zeroed
filter may grow back, as in SFP. The pruned fraction grows along the exponential
curve of the survey authors' code (Anon6627/Pruning-PGP, ``psfp.py``)::

    P(t) = P * (1 - exp(-k t)) / (1 - D),   k = -ln(D) / T,   t = 1..T epochs

so P(0) = 0 and P(T) = P. With the default D = 0.147 the schedule reaches P/4
after 1/8 of training. At the end the zeroed filters are physically removed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, SoftPruner, register


@register
class PSFPPruner(SoftPruner):
    name = "psfp"
    requires = "training"
    options = {"decay": 0.147, "mask_gradients": False, "reset_bn_stats": True}
    description = "soft L2-norm zeroing with a progressive exponential rate (He et al. 2018)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 < self.opts["decay"] < 1:
            raise ValueError(f"psfp option decay: expected a number in (0, 1), got {self.opts['decay']!r}")

    def rate_fraction_at(self, epoch: int, total: int) -> float:
        """Share of the final rate P due after 0-based ``epoch`` of ``total``: (1 - e^(-kt)) / (1 - D)."""
        decay = self.opts["decay"]
        k = -math.log(decay) / total
        return min(1.0, (1.0 - math.exp(-k * (epoch + 1))) / (1.0 - decay))

    def group_scores(self, model: nn.Module, context: PruneContext) -> dict[str, Tensor]:
        return {g.name: self.group_filters(model, g).norm(p=2, dim=1) for g in self.groups}

    def after_zeroing(self, model: nn.Module) -> None:
        # The reference code also resets the BN statistics of the zeroed channels, so a
        # filter that regrows starts from neutral statistics rather than stale ones.
        if not self.opts["reset_bn_stats"]:
            return
        with torch.no_grad():
            for g in self.groups:
                drop = self.masks.get(g.name)
                if not drop:
                    continue
                for name in g.norms:
                    bn = model.get_submodule(name)
                    if bn.running_mean is not None:
                        bn.running_mean[drop] = 0.0
                        bn.running_var[drop] = 1.0
