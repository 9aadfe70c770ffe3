"""Channel Pruning (He, Zhang, Sun, ICCV 2017, "Channel Pruning for Accelerating Very Deep Neural Networks").

A group's channels are selected by LASSO regression on their contributions to the next
layer (the group's consumer). With Z_c the contribution of channel c to every sampled
output (one row per image, location and output filter; see :mod:`.reconstruction`) and Y
the original outputs (Y = sum_c Z_c, bias aside)::

    beta = argmin 1/(2N) ||Y - sum_c beta_c Z_c||^2 + lambda ||beta||_1

and lambda is searched until exactly ``keep`` coefficients are non-zero (the reference's
bisection, ethanhe42/channel-pruning ``lib/decompose.py``, ``dictionary``). The kept
weights are then reconstructed by linear least squares, and the schedule goes block by
block (:class:`~.reconstruction.ReconstructionPruner`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from .base import register
from .reconstruction import ReconstructionPruner


def lasso_gram(gram: np.ndarray, corr: np.ndarray, penalty: float, start: np.ndarray | None = None) -> np.ndarray:
    """LASSO from its Gram form: argmin_b 1/2 b^T G b - corr^T b + penalty ||b||_1.

    Equal to 1/(2N) ||y - Z b||^2 + lambda ||b||_1 with G = Z^T Z / N, corr = Z^T y / N. Solved
    as a smooth problem in b = u - v with u, v >= 0 (L-BFGS-B with bounds), whose optimum has
    u_c v_c = 0; a coefficient is zero exactly when both halves rest on their bound.

    Args:
        gram: (C, C) symmetric positive semi-definite.
        corr: (C,).
        penalty: lambda >= 0.
        start: (C,) warm start.

    Returns:
        (C,) coefficients b.
    """
    channels = len(corr)
    if start is None:
        start = np.zeros(channels)
    x0 = np.concatenate([np.maximum(start, 0), np.maximum(-start, 0)])

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        b = x[:channels] - x[channels:]
        gb = gram @ b
        grad = gb - corr
        value = 0.5 * b @ gb - corr @ b + penalty * x.sum()
        return value, np.concatenate([grad + penalty, penalty - grad])

    result = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * channels),
                      options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    return result.x[:channels] - result.x[channels:]


def lasso_select(gram: Tensor, keep: int, steps: int = 40) -> Tensor:
    """LASSO coefficients with ``keep`` non-zeros, found by bisecting the penalty.

    The rows' outputs are the sums of all contributions, y = Z 1, so Z^T y = G 1. Every
    coefficient is zero from lambda_max = max_c |(G 1)_c| on; the search bisects
    [0, lambda_max] (the reference bisects from a doubled upper bound) until the count is
    ``keep`` or ``steps`` bisections are spent, when the last solution with more than
    ``keep`` non-zeros is returned: its ``keep`` largest |beta| are kept.

    Args:
        gram: (C, C) contribution Gram matrix.
        keep: channels to keep, 1 <= keep <= C.
        steps: bisection steps at most.

    Returns:
        (C,) |beta| as channel scores (higher is kept).
    """
    g = gram.double().numpy()
    scale = max(float(np.diag(g).max()), 1e-300)  # the support does not depend on a common scale
    g = g / scale
    corr = g.sum(axis=1)
    if keep >= len(corr):
        return torch.ones(len(corr), dtype=torch.float64)
    low, high = 0.0, float(np.abs(corr).max())
    beta_low = lasso_gram(g, corr, 0.0, np.ones(len(corr)))  # least squares: beta = 1 fits exactly
    beta = beta_low
    for _ in range(steps):
        penalty = (low + high) / 2
        beta = lasso_gram(g, corr, penalty, beta_low)
        count = int(np.count_nonzero(beta))
        if count == keep:
            return torch.from_numpy(np.abs(beta))
        if count > keep:
            low, beta_low = penalty, beta
        else:
            high = penalty
    return torch.from_numpy(np.abs(beta_low))


@register
class ChannelPruningPruner(ReconstructionPruner):
    name = "channel_pruning"
    options = {**ReconstructionPruner.options, "lasso_steps": 40}
    description = "LASSO channel selection on next-layer contributions, least-squares reconstruction (He et al. 2017)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(self.opts["lasso_steps"], int) and self.opts["lasso_steps"] >= 1):
            raise ValueError(f"channel_pruning option lasso_steps: expected an integer >= 1, got "
                             f"{self.opts['lasso_steps']!r}")

    def channel_scores(self, gram: Tensor, keep_count: int) -> Tensor:
        """|beta| at the penalty where ``keep_count`` coefficients are non-zero."""
        return lasso_select(gram, keep_count, self.opts["lasso_steps"])
