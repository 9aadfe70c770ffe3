"""Counting the training a pruned model received after its source: optimiser steps, and steps x MACs kept.

An equal comparison of pruning methods gives every model the same number of optimiser steps
after the source model, the method's own training counted (Molchanov's steps between rounds,
ThiNet's and Entropy's between layers, the epochs in which soft and regularised schedules
prune). :class:`TrainingLedger` counts them wherever they happen: the short fine-tunings
between rounds report to it (:class:`~.finetune.StepFinetuner`), and it rides along a
:class:`~.trainer.Trainer` as a hook. With a ``limit`` it refuses to go past the budget.
"""

from __future__ import annotations

from torch import nn

from ..evaluation.complexity import complexity
from ..hooks import TrainerHook, TrainingLoop


class BudgetExceededError(ValueError):
    """A method's own training needs more optimiser steps than the budget (``prune.train_steps``) allows."""


class TrainingLedger(TrainerHook):
    """Optimiser steps taken after the source model, and the same steps weighted by the MACs fraction trained.

    Args:
        source_macs: MACs of one forward pass of the source (unpruned) model at batch 1.
        input_size: (H, W) at which MACs are counted (:func:`~reid_prune.evaluation.complexity`).
        limit: the most steps allowed in all (``prune.train_steps``); None: no limit.

    ``mac_weighted_steps`` sums, over steps, the MACs of the model that took the step over
    ``source_macs``: a step at half the MACs counts 0.5. A soft schedule trains at full width
    (its zeroed channels are still computed), so its steps count 1.0 until the channels are removed.
    """

    def __init__(self, source_macs: int, input_size: tuple[int, int], *, limit: int | None = None) -> None:
        self.source_macs, self.input_size, self.limit = source_macs, input_size, limit
        self.steps = 0
        self.mac_weighted_steps = 0.0
        self._fraction = 1.0

    def macs_fraction(self, model: nn.Module) -> float:
        """MACs of ``model`` over the source's."""
        return complexity(model, self.input_size)["macs"] / self.source_macs

    @property
    def left(self) -> int | None:
        """Steps still allowed (None without a limit)."""
        return None if self.limit is None else self.limit - self.steps

    def spend(self, model: nn.Module, steps: int, *, who: str = "the method") -> None:
        """Record ``steps`` steps about to be taken by ``model`` (its width fixed during them).

        Raises:
            BudgetExceededError: they would take the total past ``limit``; nothing is recorded.
        """
        if self.limit is not None and self.steps + steps > self.limit:
            raise BudgetExceededError(
                f"prune.train_steps={self.limit}: {who} trains {self.steps + steps} optimiser steps by itself "
                f"(so far), more than the budget; raise prune.train_steps (the bench's train_steps) or lower "
                "the method's own training (its finetune_steps option)")
        self.steps += steps
        self.mac_weighted_steps += steps * self.macs_fraction(model)

    # A trainer hook: counts each step at the width of the model that took it; the width is measured
    # again after every epoch, after the hooks before this one cut (AutoBalanced, AFP+PRC).
    def on_train_start(self, loop: TrainingLoop) -> None:
        self._fraction = self.macs_fraction(loop.model)

    def on_batch_end(self, loop: TrainingLoop) -> None:
        self.steps += 1
        self.mac_weighted_steps += self._fraction

    def on_epoch_end(self, loop: TrainingLoop, epoch: int) -> None:
        self._fraction = self.macs_fraction(loop.model)

    def summary(self) -> dict[str, float | int]:
        """``train_steps`` and ``mac_weighted_steps`` (rounded to 0.01), for a report."""
        return {"train_steps": self.steps, "mac_weighted_steps": round(self.mac_weighted_steps, 2)}
