"""When to cut: the Schedule interface, and the one-shot schedule.

A schedule runs a :class:`~..base.Pruner`'s criterion and allocation on a model. Schedules
that prune outside training implement :meth:`Schedule.run`; schedules that prune during
training (``trains = True``) implement the trainer's hook events instead and finish in
:meth:`Schedule.finalize`. Every cut goes through the pruner's
:class:`~..session.PruningSession`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ...hooks import TrainingLoop
from ..criteria.base import PruneContext, score_groups

if TYPE_CHECKING:
    from ..base import Pruner


def round_up(keep: int, channels: int, min_channels: int, round_to: int) -> int:
    """``keep`` raised to at least ``min_channels`` and to a multiple of ``round_to``, never above ``channels``.

    For the partial cuts of training-time schedules; final widths come from the allocation.
    """
    return min(channels, math.ceil(max(keep, min_channels) / round_to) * round_to)


class Schedule:
    """No-op events; a schedule overrides what it uses.

    Class attributes:
        trains: prunes during training (the hook events), not in :meth:`run`.
        reads: dotted config keys of evaluation settings (``eval.metric``, ``eval.flip``,
            ``eval.ap``, ``model.retrieval_feature``) its decisions depend on; none by default.
            The bench keeps these at their real values in a pruned cell's cache key.
    """

    trains = False
    reads: tuple[str, ...] = ()

    def run(self, pruner: Pruner, model: nn.Module, context: PruneContext) -> nn.Module:
        raise NotImplementedError

    def planned_steps(self, pruner: Pruner, model: nn.Module) -> int:
        """Optimiser steps this schedule trains by itself (through ``context.finetune``) when it prunes
        ``model``, as planned before any score: the part of an equal training budget it spends. None here;
        a schedule that prunes during training spends the fine-tuning itself."""
        return 0

    def on_train_start(self, pruner: Pruner, loop: TrainingLoop) -> None:
        pass

    def regularization_loss(self, pruner: Pruner, model: nn.Module) -> Tensor | None:
        return None

    def on_after_backward(self, pruner: Pruner, loop: TrainingLoop) -> None:
        pass

    def on_batch_end(self, pruner: Pruner, loop: TrainingLoop) -> None:
        pass

    def on_epoch_end(self, pruner: Pruner, loop: TrainingLoop, epoch: int) -> None:
        pass

    def finalize(self, pruner: Pruner, model: nn.Module) -> nn.Module:
        return model

    def summary(self, pruner: Pruner) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class OneShot(Schedule):
    """Score once on the whole network, allocate, select and cut once (fine-tuning follows outside)."""

    def run(self, pruner: Pruner, model: nn.Module, context: PruneContext) -> nn.Module:
        pruner.setup(model)
        groups = pruner.session.groups
        scores = score_groups(pruner.criterion, model, groups, context) if pruner.allocation.needs_scores else None
        counts = pruner.keep_counts = pruner.allocate(model, scores) if scores is not None else pruner.keep_counts
        cut = [g for g in groups if counts[g.name] < g.channels]
        pruner.criterion.begin(model, cut, context)
        pruner.session.cut(model, pruner.criterion.select(model, cut, counts, context, scores))
        return model
