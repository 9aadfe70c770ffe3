"""Soft pruning during training (SFP, PSFP, soft FPGM): zero the lowest channels each epoch, remove them at the end.

Before the first epoch of a fresh run, and after each training epoch, the criterion scores
every group on the current weights and the lowest channels of each group are zeroed, as
many as the rate curve says is due; they keep training and may grow back before the next
epoch, which is SFP's point. The zeroing before the first epoch is the references'
``init_mask`` / ``do_mask`` before their epoch loop: SFP zeroes the full rate there, PSFP's
curve is 0 at the start. At the end (:meth:`Soft.finalize`) the channels zeroed last are
removed by surgery.

What is zeroed is what the references zero (he-y/soft-filter-pruning and
he-y/filter-pruning-geometric-median, class ``Mask``): the conv filters only. The BN after
them keeps its scale and shift, so a zeroed filter still receives a gradient and can
regrow under SGD; the final removal is then not exactly output-preserving (the BN shift of a
removed channel was a constant that the next layer read), which the fine-tuning absorbs,
as in the papers. ``mask_gradients`` (FPGM's ``do_grad_mask``) zeroes the filters'
gradients before every optimiser step instead, so they stay near zero between epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import torch
from scipy.optimize import brentq
from torch import nn

from ...hooks import TrainingLoop
from ..budget import kept
from ..criteria.base import keep_top, score_groups
from .base import Schedule

if TYPE_CHECKING:
    from ..base import Pruner

Curve = Callable[[int, int], float]  # (epochs done t, total epochs T) -> share of the final cut due


def full_rate(done: int, total: int) -> float:
    """SFP: the whole cut from the start (t = 0) on."""
    return 1.0


def exponential_curve(share_at_eighth: float) -> Curve:
    """PSFP's rate curve P_t = a e^(-k t) + b through P_0 = 0, P_(T/8) = share x P and P_T = P.

    With x = e^(-k T / 8) the three conditions leave (1 - x) / (1 - x^8) = share, solved for
    x in (0, 1) by Brent's method; then P_t / P = (1 - x^(8 t / T)) / (1 - x^8), t = epochs done.
    The survey lab's D = 0.147 (Anon6627/Pruning-PGP, ``psfp.py``) is share 1/4.

    Raises:
        ValueError: ``share`` outside (1/8, 1), where no such decaying curve exists.
    """
    if not 1 / 8 < share_at_eighth < 1:
        raise ValueError(f"share_at_eighth: expected a number in (1/8, 1), got {share_at_eighth}")
    x = brentq(lambda v: (1 - v) / (1 - v**8) - share_at_eighth, 1e-12, 1 - 1e-9, xtol=1e-15)

    def curve(done: int, total: int) -> float:
        return min(1.0, (1 - x ** (8 * done / total)) / (1 - x**8))

    return curve


class Soft(Schedule):
    """Zero the lowest channels before the first epoch and after every epoch, on a rate curve; remove them at the end.

    Args:
        curve: share of each group's final cut zeroed after t of T epochs (t = 0: before the first);
            default the full cut from the start (SFP).
        mask_gradients: zero the zeroed filters' gradients before every optimiser step.
        reset_bn_stats: also reset the zeroed channels' BN running mean to 0 and variance to 1
            (the survey lab's PSFP code), so a filter that regrows starts from neutral statistics.
    """

    trains = True

    def __init__(self, *, curve: Curve = full_rate, mask_gradients: bool = False,
                 reset_bn_stats: bool = False) -> None:
        self.curve, self.mask_gradients, self.reset_bn_stats = curve, mask_gradients, reset_bn_stats
        self.total_epochs = 0
        self.epochs_done = 0
        self.masks: dict[str, list[int]] = {}  # group -> zeroed channel indices

    def on_train_start(self, pruner: Pruner, loop: TrainingLoop) -> None:
        if pruner.session is None:
            pruner.setup(loop.model)
        self.total_epochs = loop.epochs
        if self.epochs_done == 0 and self.curve(0, self.total_epochs) > 0:
            self.zero_lowest(pruner, loop.model, 0, self.total_epochs)  # a fresh run: zero before the first epoch
        else:  # resumed (or nothing due yet): the restored masks, not a new scoring, so the run stays exact
            self.apply(pruner, loop.model)

    def on_epoch_end(self, pruner: Pruner, loop: TrainingLoop, epoch: int) -> None:
        self.zero_lowest(pruner, loop.model, epoch + 1, self.total_epochs)

    def zero_lowest(self, pruner: Pruner, model: nn.Module, done: int, total: int) -> None:
        """Score the current weights; zero each group's lowest channels for the share due after ``done`` epochs."""
        groups = pruner.session.groups
        scores = score_groups(pruner.criterion, model, groups, pruner.context)
        final = pruner.allocate(model, scores) if pruner.allocation.needs_scores else pruner.keep_counts
        share = Fraction(repr(float(self.curve(done, total))))  # the decimal it prints as, as kept() reads rates
        self.masks = {}
        for g in groups:
            keep = set(keep_top(scores[g.name], kept(g.channels, share * Fraction(g.channels - final[g.name],
                                                                                 g.channels))))
            self.masks[g.name] = [c for c in range(g.channels) if c not in keep]
        self.epochs_done = done
        self.apply(pruner, model)

    def apply(self, pruner: Pruner, model: nn.Module) -> None:
        """Zero the masked filters (and reset their BN statistics with ``reset_bn_stats``)."""
        pruner.session.zero(model, self.masks, norms=False)
        if not self.reset_bn_stats:
            return
        with torch.no_grad():
            for g in pruner.session.groups:
                for name in g.norms if self.masks.get(g.name) else ():
                    bn = model.get_submodule(name)
                    if bn.running_mean is not None:
                        bn.running_mean[self.masks[g.name]] = 0.0
                        bn.running_var[self.masks[g.name]] = 1.0

    def on_after_backward(self, pruner: Pruner, loop: TrainingLoop) -> None:
        if not self.mask_gradients:
            return
        for g in pruner.session.groups:
            if self.masks.get(g.name):
                index = torch.as_tensor(self.masks[g.name], dtype=torch.long)
                for name in g.producers:
                    module = loop.model.get_submodule(name)
                    for param in (module.weight, module.bias):
                        if param is not None and param.grad is not None:
                            param.grad.index_fill_(0, index.to(param.grad.device), 0.0)

    def finalize(self, pruner: Pruner, model: nn.Module) -> nn.Module:
        """Remove the channels of the final cut (zeroing once more at the full rate if training stopped early)."""
        if pruner.session is None:
            pruner.setup(model)
        last = max(self.total_epochs, 1)
        if self.epochs_done < last or not self.masks:
            self.zero_lowest(pruner, model, last, last)
        plan = {g.name: [c for c in range(g.channels) if c not in set(self.masks[g.name])]
                for g in pruner.session.groups}
        pruner.session.cut(model, plan)
        return model

    def summary(self, pruner: Pruner) -> dict[str, Any]:
        return {"epochs_zeroed": self.epochs_done}

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: list(v) for k, v in self.masks.items()}, "epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {k: list(v) for k, v in state.get("masks", {}).items()}
        self.epochs_done = int(state.get("epochs_done", 0))
