"""Reconstruction criteria (ThiNet, Channel Pruning): choose a group's channels by how well the next layer does without them.

A group's channels are judged by its *consumer* conv on sampled rows (:mod:`.sampling`):
a selector picks the channels to keep from the rows' contribution statistics, surgery
removes the others, and the consumer's kept weights are refit by least squares so the
pruned layer reproduces its original outputs (:func:`refit_weights`).

Selectors:

* ``thinet`` (Luo et al., ICCV 2017, Algorithm 1; Roll920/ThiNet_Code ``value_sum``):
  greedy removal, each step adding the channel c to the removal set T that minimises
  sum over rows of (sum_{j in T + {c}} x_j)^2 (:func:`greedy_removal_order`).
* ``lasso`` (He et al., ICCV 2017; ethanhe42/channel-pruning ``lib/decompose.py``,
  ``dictionary``): LASSO regression of the outputs on the channels' contributions, with an
  intercept as scikit-learn's ``Lasso`` fits by default in the reference, at the largest
  penalty where exactly ``keep`` coefficients are non-zero (:func:`lasso_scores`).

The criterion selects one group at a time on the current network (the layer-wise
schedule). A bottleneck's second group takes its samples from the first group's stored
patches when :func:`~.sampling.derives_samples` allows, without another forward pass.
Under torchrun the row statistics are averaged over the ranks before selection, and rank
0's refit weights are broadcast, so every rank goes on from the same network.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from sklearn.linear_model import lars_path_gram
from torch import Tensor, nn

from ...distributed import broadcast_tensors
from ..groups import ChannelGroup
from ..options import choice, number_range
from .base import Criterion, PruneContext, Selection, keep_top, reduced
from .sampling import (check_consumer, contribution_gram, contribution_sums, conv_outputs, derives_samples,
                       follower_patches, sample_patches)

REFITS = ("weights", "scale", "none")
SCOPE_NOTE = ("it judges channels by how well the one conv that reads them can be reconstructed without them, and "
              "a residual stream's channels are read by several convs (each block's first conv and shortcut) and by "
              "the residual add")


@dataclass
class ReconstructionOptions:
    """Options of ThiNet and Channel Pruning."""

    samples_per_image: int = number_range(10, 1)  # 10 in both papers
    refit: str = choice("weights", *REFITS)
    finetune_steps: int = number_range(0, 0)  # after each block but the last
    seed: int = number_range(0, 0)  # location sampling


def _ridge(inputs: Tensor, residual: Tensor, alphas: Iterable[float], at: Tensor | None = None) -> Iterable[Tensor]:
    """For each alpha, D = argmin ||residual - inputs D||^2 + alpha ||D||^2 (m, out), or ``at @ D`` when given.

    Solved by Cholesky on the m x m normal equations, or on the n x n kernel form
    D = inputs^T (inputs inputs^T + alpha I)^-1 residual when there are fewer rows n than
    unknowns m; ``at`` (h, m) is then folded in once, before the loop.
    """
    n, m = inputs.shape
    if n < m:
        matrix, rhs = inputs @ inputs.T, residual
        left = inputs.T if at is None else at @ inputs.T
    else:
        matrix, rhs, left = inputs.T @ inputs, inputs.T @ residual, at
    eye = torch.eye(len(matrix), dtype=matrix.dtype)
    for alpha in alphas:
        solved = torch.cholesky_solve(rhs, torch.linalg.cholesky(matrix + alpha * eye))
        yield solved if left is None else left @ solved


def ridge_correction(inputs: Tensor, residual: Tensor, holdout: float = 0.2) -> Tensor:
    """D minimising ||residual - inputs D||^2 + alpha ||D||^2, alpha chosen on held-out rows.

    The last ``holdout`` fraction of the rows (whole images: rows are image-major) is held
    out; alpha = 10^-6 .. 10^0 times the mean squared column norm of the fit rows, or no
    correction at all (alpha = infinity), whichever reproduces the held-out residual best;
    the chosen alpha, scaled to the row count, is then refit on every row. alpha > 0 keeps
    the problem well posed with fewer rows than unknowns.

    Args:
        inputs: (n, m) float64.
        residual: (n, out) float64.
        holdout: fraction of rows held out to choose alpha.

    Returns:
        (m, out) float64; zeros when no alpha beats leaving the weights alone.
    """
    n, m = inputs.shape
    split = n - max(1, int(n * holdout))
    if split < 1:
        return torch.zeros(m, residual.shape[1], dtype=torch.float64)
    fit_x, fit_r, held_x, held_r = inputs[:split], residual[:split], inputs[split:], residual[split:]
    unit = max(float(fit_x.pow(2).sum()) / m, 1e-300)
    alphas = [unit * 10.0**power for power in range(-6, 1)]
    best_error, best_alpha = float(held_r.pow(2).sum()), None
    for alpha, predicted in zip(alphas, _ridge(fit_x, fit_r, alphas, at=held_x)):
        error = float((held_r - predicted).pow(2).sum())
        if error < best_error:
            best_error, best_alpha = error, alpha
    if best_alpha is None:
        return torch.zeros(m, residual.shape[1], dtype=torch.float64)
    return next(iter(_ridge(inputs, residual, [best_alpha * n / split])))


def refit_weights(patches: Tensor, weight: Tensor, keep: Sequence[int] | Tensor, how: str = "weights") -> Tensor:
    """Consumer weights for the kept input channels that best reproduce its original outputs on the samples.

    Targets are the original outputs minus bias, Y = X W^T (n, out_c), with X the patches.

    * ``"weights"`` (Channel Pruning's reconstruction; the issue's "refit the next layer's kept
      weights by least squares"): W'_S = W_S + D with D the ridge-regularised least-squares fit
      of the removed channels' share, Y - X_S W_S^T = X_{removed} W_{removed}^T, by the kept
      channels' patches X_S (n, |S| k), for all filters at once (:func:`ridge_correction`).
      Plain least squares (the paper) needs many more sampled rows than the |S| k unknowns
      per filter; with a few hundred images it fits the samples and loses on fresh images,
      so the penalty is chosen on held-out samples and shrinks towards the sliced weights.
    * ``"scale"`` (ThiNet's paper, Section 3.3, and reference code): one factor per kept
      channel, w = argmin sum over rows (y - sum_{c in S} w_c x_c)^2, then W'[:, c] = w_c W[:, c].
    * ``"none"``: the sliced weights W[:, S].

    Args:
        patches: (n, in_c, k) consumer input patches.
        weight: (out_c, in_c, kh, kw) the consumer's original weights.
        keep: indices of the kept input channels.
        how: ``"weights"``, ``"scale"`` or ``"none"``.

    Returns:
        (out_c, len(keep), kh, kw) float64 on the CPU.
    """
    keep = torch.as_tensor(keep, dtype=torch.long)
    original = weight.detach().double().cpu()
    sliced = original[:, keep]
    if how == "none":
        return sliced
    if how == "scale":
        gram = contribution_gram(patches, weight, torch.float64)
        # Normal equations of the rows: G_SS w = sum_{p,f} x_S y = G[S, :] 1.
        factors = torch.linalg.lstsq(gram[keep][:, keep], gram[keep].sum(dim=1, keepdim=True)).solution
        return sliced * factors.reshape(1, -1, 1, 1)
    if how != "weights":
        raise ValueError(f"refit: expected one of {list(REFITS)}, got {how!r}")
    kept_patches = patches[:, keep].flatten(1).double()  # (n, |S| k)
    residual = conv_outputs(patches, weight) - kept_patches @ sliced.flatten(1).T  # the removed channels' share
    return sliced + ridge_correction(kept_patches, residual).T.reshape(sliced.shape)


def reconstruction_error(patches: Tensor, weight: Tensor, keep: Sequence[int] | Tensor, new_weight: Tensor) -> float:
    """Relative error ||Y - X_S W'^T|| / ||Y|| of the pruned consumer on the samples, Y = X W^T the original outputs."""
    keep = torch.as_tensor(keep, dtype=torch.long)
    target = conv_outputs(patches, weight)
    approx = conv_outputs(patches[:, keep], new_weight)
    return float((target - approx).norm() / target.norm().clamp_min(1e-30))




def greedy_removal_order(gram: Tensor) -> Tensor:
    """The order in which ThiNet's greedy step removes every channel.

    With G the rows' Gram matrix, the energy of a removal set T is 1_T^T G 1_T, so adding
    channel c to T costs energy(T) + 2 (G 1_T)_c + G_cc. Keeping g = G 1_T up to date makes
    each step one vectorised evaluation of all candidates. Ties go to the lower index.

    Args:
        gram: (C, C) contribution Gram matrix (:func:`~.sampling.contribution_gram`).

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


def thinet_scores(gram: Tensor, sums: Tensor, rows: int, keep: int) -> Tensor:
    """Step at which ThiNet's greedy removes each channel (higher = removed later = kept)."""
    scores = torch.empty(gram.shape[0], dtype=torch.float64)
    scores[greedy_removal_order(gram)] = torch.arange(gram.shape[0], dtype=torch.float64)
    return scores


def lasso_scores(gram: Tensor, sums: Tensor, rows: int, keep: int) -> Tensor:
    """|beta| of the LASSO with an intercept at the largest penalty where ``keep`` coefficients are non-zero.

    With Z (rows, C) the channels' contributions and y = Z 1 the outputs (bias aside), the
    LASSO with an intercept,

        min over b0, beta of 1/(2N) ||y - b0 - Z beta||^2 + lambda ||beta||_1,

    is the LASSO without one on the centred columns, whose Gram matrix is the covariance
    S = G / N - m m^T (m = column means) and whose correlations are S 1. scikit-learn's
    ``lars_path_gram`` follows its exact, piecewise-linear path; between two events the
    active set is fixed, so the midpoint of the first segment with ``keep`` active
    coefficients has exactly ``keep`` non-zeros. A constant channel has no variance and is
    absorbed by the intercept. If the path ends with fewer active channels (channels that
    never vary, or exact duplicates), the end of the path is returned and ties in the
    ranking keep the lower index.

    Args:
        gram: (C, C) sum over rows of x x^T. sums: (C,) sum over rows of x. rows: N.
        keep: channels to keep, 1 <= keep.

    Returns:
        (C,) float64 |beta|; higher is kept.
    """
    channels = gram.shape[0]
    if keep >= channels:
        return torch.ones(channels, dtype=torch.float64)
    mean = sums.double() / rows
    covariance = gram.double() / rows - torch.outer(mean, mean)
    covariance = covariance / covariance.diagonal().max().clamp_min(1e-300)  # the support does not depend on scale
    cov = covariance.numpy()
    _, _, coefs = lars_path_gram(Xy=cov.sum(axis=1), Gram=cov, n_samples=1, method="lasso", max_iter=4 * channels)
    for i in range(coefs.shape[1] - 1):
        middle = (coefs[:, i] + coefs[:, i + 1]) / 2
        if np.count_nonzero(middle) >= keep:
            return torch.from_numpy(np.abs(middle))
    return torch.from_numpy(np.abs(coefs[:, -1]))


SELECTORS: dict[str, Callable[[Tensor, Tensor, int, int], Tensor]] = {"thinet": thinet_scores,
                                                                       "lasso": lasso_scores}


class Reconstruction(Criterion):
    """Selects one group's channels by reconstructing its consumer's outputs, then refits the consumer.

    Args:
        selector: ``"thinet"`` or ``"lasso"`` (see the module docstring).
        samples_per_image: sampled output locations per image (10 in both papers).
        refit: ``"weights"``, ``"scale"`` or ``"none"`` (:func:`refit_weights`).
        seed: seed of the location sampling (each group draws from its own seeded generator).
    """

    needs_data = True
    rankable = False  # a removal step or |beta| means nothing outside its own group

    def __init__(self, selector: str, *, samples_per_image: int = 10, refit: str = "weights", seed: int = 0) -> None:
        self.name, self.selector = selector, SELECTORS[selector]
        self.samples_per_image, self.refit, self.seed = samples_per_image, refit, seed
        self.groups: dict[str, ChannelGroup] = {}
        self.carried: dict[str, Tensor] = {}  # group -> samples derived from the previous group's patches
        self.errors: dict[str, dict[str, float]] = {}

    def begin(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> None:
        for g in groups:
            if len(g.consumers) != 1:
                raise ValueError(f"group {g.name!r} is read by {g.consumers}; {self.name} needs exactly one "
                                 "consumer conv")
            check_consumer(g.consumers[0], model.get_submodule(g.consumers[0]))
        self.groups, self.carried, self.errors = {g.name: g for g in groups}, {}, {}

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        raise ValueError(f"{self.name} selects each group's channels jointly for a keep count; it has no "
                         "per-channel scores to rank on their own")

    def _follower(self, model: nn.Module, group: ChannelGroup) -> ChannelGroup | None:
        """The group whose consumer samples can be derived from ``group``'s (a bottleneck's conv2 group)."""
        for other in self.groups.values():
            if other.producers == group.consumers and derives_samples(model, group, other):
                return other
        return None

    def _patches(self, model: nn.Module, group: ChannelGroup, context: PruneContext) -> tuple[Tensor, ChannelGroup | None]:
        """The group's consumer patches, and the follower whose patches can be derived from them (or None)."""
        if group.name in self.carried:  # derived samples were not read from the network: no follower check
            return self.carried.pop(group.name), None
        follower = self._follower(model, group)
        consumers = group.consumers + (follower.consumers if follower else [])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(group.name.encode()))
        was_training = model.training
        model.eval()
        try:
            sampled = sample_patches(model, context.batches(f"criterion {self.name!r}"), consumers,
                                     self.samples_per_image, generator)
        finally:
            model.train(was_training)
        if follower is not None and not torch.allclose(
            follower_patches(model, sampled[0], follower), sampled[1],
            rtol=1e-4, atol=1e-5 * float(sampled[1].abs().max().clamp_min(1e-12)),
        ):
            follower = None  # not norm + ReLU in between: the follower gets its own pass
        return sampled[0], follower

    def select(self, model: nn.Module, groups: Sequence[ChannelGroup], counts: Mapping[str, int],
               context: PruneContext, scores: Mapping[str, Tensor] | None = None) -> Selection:
        if len(groups) != 1:
            raise ValueError(f"{self.name} selects one group at a time on the current network (layer-wise)")
        group = groups[0]
        if group.name not in self.groups:
            self.begin(model, groups, context)
        patches, follower = self._patches(model, group, context)
        consumer = group.consumers[0]
        weight = model.get_submodule(consumer).weight.detach().clone()
        stats = reduced({"gram": contribution_gram(patches, weight), "sums": contribution_sums(patches, weight)})
        rows = patches.shape[0] * weight.shape[0]
        keep = keep_top(self.selector(stats["gram"], stats["sums"], rows, counts[group.name]), counts[group.name])
        new_weight = refit_weights(patches, weight, keep, self.refit)

        def refit(pruned: nn.Module) -> None:
            with torch.no_grad():
                target = pruned.get_submodule(consumer).weight
                target.copy_(new_weight.to(dtype=target.dtype, device=target.device))
                broadcast_tensors([target])  # rank 0's fit on every rank
            self.errors[group.name] = {
                "sliced": reconstruction_error(patches, weight, keep, weight[:, keep]),
                "refit": reconstruction_error(patches, weight, keep, new_weight),
            }
            if follower is not None:
                self.carried[follower.name] = follower_patches(pruned, patches[:, keep], follower)

        return Selection({group.name: keep}, refit)

    def summary(self) -> dict[str, Any]:
        """Relative reconstruction error of each consumer on the samples, with sliced and with refit weights."""
        return {"reconstruction_error": {name: {k: round(v, 6) for k, v in e.items()}
                                         for name, e in self.errors.items()}}
