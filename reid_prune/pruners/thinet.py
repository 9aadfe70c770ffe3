"""ThiNet (Luo, Wu, Lin, ICCV 2017, "ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression").

A channel of layer i is judged by layer i+1 (the group's consumer). Over sampled rows x
(one per image, location and output filter; x_c = channel c's contribution to that
output, see :mod:`.reconstruction`), the removal set T grows greedily from empty: each
step adds the channel c minimising

    sum over rows of (sum_{j in T + {c}} x_j)^2

until channels - keep are removed (the paper's Algorithm 1; the reference code's
``value_sum`` in ThiNet_ICCV/compress_model.py). The kept weights of the consumer are then
refit by least squares, and the schedule goes block by block with optional fine-tuning in
between (:class:`~.reconstruction.ReconstructionPruner`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import register
from .reconstruction import ReconstructionPruner


def greedy_removal_order(gram: Tensor) -> Tensor:
    """The order in which ThiNet's greedy step removes every channel.

    With G the rows' Gram matrix, the energy of a removal set T is 1_T^T G 1_T, so adding
    channel c to T costs energy(T) + 2 (G 1_T)_c + G_cc. Keeping g = G 1_T up to date makes
    each step one vectorised evaluation of all candidates. Ties go to the lower index.

    Args:
        gram: (C, C) contribution Gram matrix (:func:`~.reconstruction.contribution_gram`).

    Returns:
        (C,) long: channel removed at step 0, 1, ... The first ``C - keep`` entries are the
        channels ThiNet removes to keep ``keep``.
    """
    gram = gram.double()
    channels = gram.shape[0]
    removed = torch.zeros(channels, dtype=torch.bool)
    cross = torch.zeros(channels, dtype=torch.float64)  # G 1_T
    energy = torch.zeros((), dtype=torch.float64)
    order = []
    for _ in range(channels):
        cost = (energy + 2 * cross + gram.diagonal()).masked_fill(removed, float("inf"))
        pick = int(torch.argmin(cost))
        order.append(pick)
        energy = cost[pick]
        cross += gram[:, pick]
        removed[pick] = True
    return torch.tensor(order, dtype=torch.long)


@register
class ThiNetPruner(ReconstructionPruner):
    name = "thinet"
    description = "greedy least-reconstruction-error removal judged by the next layer, with refit (Luo et al. 2017)"

    def channel_scores(self, gram: Tensor, keep_count: int) -> Tensor:
        """Step at which the greedy removes each channel: the last removed are kept."""
        scores = torch.empty(gram.shape[0], dtype=torch.float64)
        scores[greedy_removal_order(gram)] = torch.arange(gram.shape[0], dtype=torch.float64)
        return scores
