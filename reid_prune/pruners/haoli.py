"""HaoLi: L1 filter norm (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

Score of output channel j: s_j = sum |W_j| over the filter that writes it (for a
residual-stream group, over every producer's filter side by side). The smallest
scores are pruned once; fine-tuning follows.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import PruneContext, Pruner, register


@register
class HaoLiPruner(Pruner):
    name = "haoli"
    requires = "weights"
    description = "L1 norm of each filter, one-shot (Li et al. 2017)"

    def group_scores(self, model: nn.Module, context: PruneContext) -> dict[str, Tensor]:
        return {g.name: self.group_filters(model, g).abs().sum(dim=1) for g in self.groups}
