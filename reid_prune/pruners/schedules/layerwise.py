"""Layer-wise pruning (Entropy, ThiNet, Channel Pruning): one group at a time, in network order.

Each group is selected on the current network, with the groups before it already cut
(and refit, for reconstruction criteria), then cut. ``finetune_steps`` training steps
through ``context.finetune`` follow each unit but the last: each group (``unit="group"``,
Luo & Wu's entropy method) or each residual block (``unit="block"``, ThiNet fine-tunes
after each ResNet block). The final fine-tuning belongs to the caller. Groups that keep
all their channels are skipped.
"""

from __future__ import annotations

import itertools
import warnings
from typing import TYPE_CHECKING, Any

from torch import nn

from ..criteria.base import PruneContext, score_groups
from ..groups import ChannelGroup
from .base import Schedule

if TYPE_CHECKING:
    from ..base import Pruner

UNITS = ("group", "block")


def block_of(group: ChannelGroup) -> str:
    """The residual block a group's producer belongs to (``layer2.0`` for ``layer2.0.conv1``)."""
    return group.producers[0].rpartition(".")[0]


class LayerWise(Schedule):
    """Select and cut one group at a time; fine-tune between units.

    Args:
        unit: ``"group"`` or ``"block"``: what is pruned between two fine-tunings.
        finetune_steps: training steps after each unit but the last (0: none).

    Without ``context.finetune`` (a one-call ``reid_prune.prune``) no fine-tuning can run
    between units: the schedule warns and goes on; the summary counts the steps trained.
    """

    def __init__(self, *, unit: str = "group", finetune_steps: int = 0) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit: expected one of {UNITS}, got {unit!r}")
        self.unit, self.finetune_steps = unit, finetune_steps
        self.units_pruned = self.steps_trained = 0

    def run(self, pruner: Pruner, model: nn.Module, context: PruneContext) -> nn.Module:
        """Returns ``model`` (or what ``context.finetune`` returned), physically pruned, in its train/eval mode."""
        steps = self.finetune_steps if context.finetune is not None else 0
        if self.finetune_steps and not steps:
            warnings.warn(f"{pruner.name}: no fine-tuning between layers (finetune_steps={self.finetune_steps} "
                          "needs PruneContext(finetune=...); reid-prune prune provides it)", stacklevel=3)
        was_training = model.training
        pruner.setup(model)
        session, criterion = pruner.session, pruner.criterion
        counts = pruner.keep_counts
        if pruner.allocation.needs_scores:  # ranked once, on the unpruned network
            counts = pruner.keep_counts = pruner.allocate(model, score_groups(criterion, model, session.groups,
                                                                              context))
        cut = [g for g in session.groups if counts[g.name] < g.channels]
        criterion.begin(model, cut, context)
        key = block_of if self.unit == "block" else (lambda g: g.name)
        units = [[g.name for g in members] for _, members in itertools.groupby(cut, key=key)]
        self.units_pruned, self.steps_trained = 0, 0
        for number, names in enumerate(units):
            for name in names:
                group = session.group(name)  # at its current width: earlier cuts may have changed its readers
                session.cut(model, criterion.select(model, [group], counts, context))
            self.units_pruned += 1
            if steps and number < len(units) - 1:
                model = context.finetune(model, steps)
                self.steps_trained += steps
        return model.train(was_training)

    def planned_steps(self, pruner: Pruner, model: nn.Module) -> int:
        """``finetune_steps`` after each unit with a cut but the last: exact for widths fixed before any score;
        with an allocation that reads scores, every group of the scope counts as cut (an upper bound)."""
        pruner.setup(model)
        counts = pruner.keep_counts
        cut = [g for g in pruner.session.groups if not counts or counts[g.name] < g.channels]
        key = block_of if self.unit == "block" else (lambda g: g.name)
        return self.finetune_steps * max(len([k for k, _ in itertools.groupby(cut, key=key)]) - 1, 0)

    def summary(self, pruner: Pruner) -> dict[str, Any]:
        return {"units_pruned": self.units_pruned, "finetune_steps_between_units": self.steps_trained}
