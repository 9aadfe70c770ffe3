"""Auto-balanced regularisation with rounds of cuts (Ding et al., "Auto-Balanced Filter Pruning", AAAI 2018).

During training every channel group carries an L2 regulariser whose factor is positive on
the channels to be pruned and negative on the others, graded by how far each channel's L1
norm M_j lies from the threshold theta (the norm of the round's keep-th largest channel)::

    lambda_j = 1 + ln(theta / M_j)       M_j <  theta   (pushed toward zero)
    lambda_j = -1 - ln(M_j / theta)      M_j >= theta   (strengthened)

and balanced so the terms sum to zero in each group (the "auto-balanced" property): with
S+ = sum over lambda > 0 of lambda ||w||^2 and S- = the same over lambda < 0, the factors
are ``strength * lambda`` on the positive side and ``tau * lambda`` on the negative side,
tau = -strength * S+ / S-. ``w_j`` is every trainable parameter that writes channel j
(:func:`~..criteria.magnitude.channel_parameters`). The grading and balancing follow the
equations of a public reimplementation that cites the paper's Eq. 6-13 (the paper's own
text could not be read here; see docs/pruners.md).

Schedule ("abreast advancing": all groups advance together): the training epochs are split
into ``rounds + 1`` parts; at the end of each of the first ``rounds`` parts every group is
cut (surgery) by a share 1/rounds of its total cut (kept counts by :func:`~..budget.kept`
on the share due so far), the lowest-norm channels first; the last part retrains without
the regulariser. :meth:`AutoBalanced.finalize` completes the cut when training stopped early.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...hooks import TrainingLoop
from ..budget import kept
from ..criteria.base import keep_top, score_groups
from ..criteria.magnitude import channel_norms
from .base import Schedule, round_up

if TYPE_CHECKING:
    from ..base import Pruner


def graded_factors(norms: Tensor, keep: int) -> Tensor:
    """Unbalanced factors lambda (channels,) from L1 norms M: positive below the threshold, negative at or above.

    The threshold is the ``keep``-th largest norm, so the ``keep`` largest channels are on
    the negative side (ties: :func:`~..criteria.base.keep_top`). Norms of 0 are clamped to
    the smallest positive float.
    """
    norms = norms.detach().double().clamp_min(torch.finfo(torch.float64).tiny)
    kept = torch.zeros(len(norms), dtype=torch.bool)
    kept[keep_top(norms, keep)] = True
    threshold = norms[kept].min()
    return torch.where(kept, -1 - torch.log(norms / threshold), 1 + torch.log(threshold / norms))


def balanced_factors(sq_norms: Tensor, graded: Tensor, strength: float) -> Tensor:
    """Factors ``strength * lambda`` (lambda > 0) and ``tau * lambda`` (lambda < 0) whose terms sum to zero.

    Args:
        sq_norms: squared L2 norm of each channel's parameters (channels,).
        graded: :func:`graded_factors` (channels,).
        strength: the factor scale on the pushed side.

    Returns:
        (channels,) with ``(factors * sq_norms).sum() == 0``; the negative side is 0 when its
        weighted sum is 0 (nothing to strengthen).
    """
    sq_norms, graded = sq_norms.detach().double(), graded.double()
    pushed = (graded.clamp_min(0) * sq_norms).sum()
    held = (graded.clamp_max(0) * sq_norms).sum()
    tau = torch.where(held < 0, -strength * pushed / held.clamp_max(-torch.finfo(torch.float64).tiny), 0.0)
    return torch.where(graded > 0, strength * graded, tau * graded)


class AutoBalanced(Schedule):
    """Balanced, graded L2 regularisation with ``rounds`` rounds of cuts during training."""

    trains = True

    def __init__(self, *, rounds: int = 3, strength: float = 5e-4) -> None:
        self.rounds, self.strength = rounds, strength
        self.total_epochs = 0
        self.start_channels: dict[str, int] = {}  # group -> width before the first round
        self.final_keep: dict[str, int] = {}  # group -> width after the last round
        self.rounds_done = 0
        self.history: list[dict[str, Any]] = []

    def keep_after(self, pruner: Pruner, name: str, rounds: int) -> int:
        """Width of group ``name`` once ``rounds`` rounds have cut their share (rounded up to ``round_to``).

        The one rounding rule (:func:`~..budget.kept`) on the share of the cut due so far:
        floor(C (1 - rounds / R x cut / C)), in exact fractions.
        """
        start = self.start_channels[name]
        if rounds >= self.rounds:
            return self.final_keep[name]
        keep = kept(start, Fraction(rounds, self.rounds) * Fraction(start - self.final_keep[name], start))
        return round_up(keep, start, pruner.min_channels, pruner.round_to)

    def round_end_epoch(self, round_number: int, total: int) -> int:
        """0-based epoch after which round ``round_number`` (1-based) cuts: ``rounds + 1`` equal parts, one epoch each at least."""
        return min(total - 1, max(round_number - 1, (round_number * total) // (self.rounds + 1) - 1))

    def on_train_start(self, pruner: Pruner, loop: TrainingLoop) -> None:
        self.total_epochs = loop.epochs
        if not self.final_keep:
            self.begin(pruner, loop.model)
        else:  # resumed: the model may already have lost some rounds' channels
            pruner.setup(loop.model, plan=False)

    def begin(self, pruner: Pruner, model: nn.Module) -> None:
        pruner.setup(model)
        self.start_channels = pruner.session.widths()
        self.final_keep = dict(pruner.final_counts(model))

    def regularization_loss(self, pruner: Pruner, model: nn.Module) -> Tensor | None:
        if self.rounds_done >= self.rounds or self.strength == 0:
            return None
        total = None
        importance = score_groups(pruner.criterion, model, pruner.session.groups, pruner.context)
        for g in pruner.session.groups:
            keep = self.keep_after(pruner, g.name, self.rounds_done + 1)
            if keep >= g.channels:
                continue
            sq = channel_norms(model, g, 2)
            factors = balanced_factors(sq, graded_factors(importance[g.name], keep), self.strength)
            term = (factors.to(sq.dtype) * sq).sum()
            total = term if total is None else total + term
        return total

    def on_epoch_end(self, pruner: Pruner, loop: TrainingLoop, epoch: int) -> None:
        due = sum(self.round_end_epoch(r, self.total_epochs) <= epoch for r in range(1, self.rounds + 1))
        if due > self.rounds_done:
            self.cut(pruner, loop.model, due)
            loop.rebuild_optimizer()

    def cut(self, pruner: Pruner, model: nn.Module, through: int) -> None:
        """Bring every group to its width after round ``through``, the least important (lowest L1) going first."""
        plan, ratios = {}, []
        importance = score_groups(pruner.criterion, model, pruner.session.groups, pruner.context)
        with torch.no_grad():
            for g in pruner.session.groups:
                norms = importance[g.name]
                plan[g.name] = keep_top(norms, self.keep_after(pruner, g.name, through))
                dropped = torch.ones(g.channels, dtype=torch.bool)
                dropped[plan[g.name]] = False
                if 0 < int(dropped.sum()) < g.channels:
                    ratios.append(float(norms[dropped].mean() / norms[~dropped].mean().clamp_min(1e-12)))
        self.history.append({
            "round": through,
            "channels_cut": sum(g.channels - len(plan[g.name]) for g in pruner.session.groups),
            "cut_norm_ratio": round(sum(ratios) / len(ratios), 6) if ratios else None,
        })
        pruner.session.cut(model, plan)
        self.rounds_done = through

    def finalize(self, pruner: Pruner, model: nn.Module) -> nn.Module:
        """Cut the rounds training did not reach (all of them if it never started); return ``model``."""
        if not self.final_keep:
            self.begin(pruner, model)
        elif pruner.session is None:
            pruner.setup(model, plan=False)
        if self.rounds_done < self.rounds:
            self.cut(pruner, model, self.rounds)
        return model

    def summary(self, pruner: Pruner) -> dict[str, Any]:
        """Per-round cuts, with the mean L1 norm of the cut channels over the kept ones at the cut."""
        start = sum(self.start_channels.values())
        final = sum(self.keep_after(pruner, name, self.rounds_done) for name in self.start_channels)
        return {"reached_rate": round(1 - final / start, 6) if start else 0.0, "rounds": list(self.history)}

    def state_dict(self) -> dict[str, Any]:
        return {"start_channels": dict(self.start_channels), "final_keep": dict(self.final_keep),
                "rounds_done": self.rounds_done, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_channels = {k: int(v) for k, v in state.get("start_channels", {}).items()}
        self.final_keep = {k: int(v) for k, v in state.get("final_keep", {}).items()}
        self.rounds_done = int(state.get("rounds_done", 0))
        self.history = [dict(h) for h in state.get("history", [])]
