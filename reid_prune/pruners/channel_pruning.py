"""Channel Pruning (He, Zhang, Sun, ICCV 2017, "Channel Pruning for Accelerating Very Deep Neural Networks").

A group's channels are selected by LASSO regression on their contributions to the next
layer (the group's consumer). With Z_c the contribution of channel c to every sampled
output (one row per image, location and output filter; see :mod:`.reconstruction`) and Y
the original outputs (Y = sum_c Z_c, bias aside)::

    beta = argmin 1/(2N) ||Y - sum_c beta_c Z_c||^2 + lambda ||beta||_1

with the largest lambda at which exactly ``keep`` coefficients are non-zero. The reference
(ethanhe42/channel-pruning ``lib/decompose.py``, ``dictionary``) searches lambda by
doubling and bisection around scikit-learn's Lasso until the count is near ``keep``; here
the piecewise-linear LASSO path is followed exactly (:func:`lasso_path`), which needs no
search and lands on the exact count. The kept channels are those with beta != 0; the
consumer's kept weights are then reconstructed by least squares
(:func:`~.reconstruction.refit_weights`), and the schedule goes block by block
(:class:`~.reconstruction.ReconstructionPruner`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import register
from .reconstruction import ReconstructionPruner


def lasso_path(gram: Tensor, corr: Tensor, keep: int) -> tuple[Tensor, float]:
    """The LASSO solution with ``keep`` non-zeros at the largest such penalty, by following the path.

    Minimises 1/2 b^T G b - corr^T b + lambda ||b||_1, which equals 1/(2N) ||y - Z b||^2 +
    lambda ||b||_1 for G = Z^T Z / N and corr = Z^T y / N. The solution is piecewise linear
    in lambda (the homotopy / LARS-LASSO algorithm: Osborne et al. 2000, Efron et al. 2004):
    from lambda_max = max |corr|, where b = 0, lambda decreases; between events the active
    coefficients move along G_AA^-1 sign, a channel joins when its correlation reaches
    lambda and leaves when its coefficient crosses zero. Right after the ``keep``-th channel
    joins, the point halfway to the next event has exactly ``keep`` non-zeros.

    Args:
        gram: (C, C) symmetric positive semi-definite.
        corr: (C,).
        keep: wanted number of non-zeros, 1 <= keep <= C.

    Returns:
        (b (C,) float64, lambda). When the path reaches lambda = 0 with fewer channels
        (channels that contribute nothing, or exact duplicates, never join) it is the
        least-squares end.
    """
    gram = gram.double()
    beta = torch.zeros(len(corr), dtype=torch.float64)
    residual = corr.double().clone()  # corr - G b: |residual| = lambda on the active set
    penalty = float(residual.abs().max())
    tol = 1e-12 * max(penalty, 1e-300)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    active: list[int] = []
    joining, dropped = int(residual.abs().argmax()), -1
    while penalty > tol:
        if joining >= 0:
            active.append(joining)
        index = torch.tensor(active)
        signs = residual[index].sign()
        block = gram[index][:, index]
        direction, info = torch.linalg.solve_ex(block, signs)
        if info:  # exactly singular (duplicate channels): the least-norm direction
            direction = torch.linalg.lstsq(block, signs[:, None]).solution[:, 0]
        rate = gram[:, index] @ direction  # d(residual)/d(step); equals signs on the active set
        join = torch.minimum(torch.where(1 - rate > tol, (penalty - residual) / (1 - rate), inf),
                             torch.where(1 + rate > tol, (penalty + residual) / (1 + rate), inf))
        leave = torch.where(direction * beta[index] < 0, -beta[index] / direction, inf)
        join[index] = inf
        if dropped >= 0:
            join[dropped] = inf  # it left at this point; it cannot rejoin at once
        join[join <= tol] = inf
        leave[leave <= tol] = inf
        next_join, next_leave = float(join.min()), float(leave.min())
        step = min(next_join, next_leave, penalty)
        if len(active) == keep:
            beta[index] += step / 2 * direction
            return beta, penalty - step / 2
        beta[index] += step * direction
        residual -= step * rate
        penalty -= step
        if next_leave <= step and next_leave < next_join:
            dropped = active.pop(int(leave.argmin()))
            beta[dropped] = 0.0
            joining = -1
        elif next_join <= step:
            joining, dropped = int(join.argmin()), -1
        else:
            break  # lambda reached 0 before another channel could join
    return beta, max(penalty, 0.0)


def lasso_select(gram: Tensor, keep: int) -> Tensor:
    """|beta| of the LASSO on the channels' contributions with ``keep`` non-zeros (channel scores).

    The rows' outputs are the sums of all contributions, y = Z 1, so Z^T y = G 1. The Gram
    matrix is scaled to a unit largest diagonal first (the support does not depend on it).

    Args:
        gram: (C, C) contribution Gram matrix (:func:`~.reconstruction.contribution_gram`).
        keep: channels to keep.

    Returns:
        (C,) float64 |beta|; higher is kept.
    """
    if keep >= len(gram):
        return torch.ones(len(gram), dtype=torch.float64)
    g = gram.double() / gram.diagonal().max().double().clamp_min(1e-300)
    beta, _ = lasso_path(g, g.sum(dim=1), keep)
    return beta.abs()


@register
class ChannelPruningPruner(ReconstructionPruner):
    name = "channel_pruning"
    description = "LASSO channel selection on next-layer contributions, least-squares reconstruction (He et al. 2017)"

    def channel_scores(self, gram: Tensor, keep_count: int) -> Tensor:
        """|beta| at the penalty where ``keep_count`` coefficients are non-zero."""
        return lasso_select(gram, keep_count)
