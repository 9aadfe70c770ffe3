"""Iterative pruning (Molchanov et al. 2017 / 2019): score, remove the lowest channels across groups, fine-tune, repeat.

Each round scores every group on the current network, ranks the channels of all groups
together by their comparable scores (the criterion's normaliser, Molchanov 2017's
layer-wise L2 normalisation, minus the optional FLOPs penalty), removes the
``channels_per_step`` lowest among those the allocation still wants removed, and
fine-tunes ``finetune_steps`` steps through ``context.finetune`` before the next round.
With the ``uniform`` or ``layer_rates`` allocation the final widths are fixed at the start
and the ranking only orders the removals; with ``global`` the allocation is planned again
every round on the current network from that same ranking, penalty included, so the
ranking decides where the channels go (the paper's procedure).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..allocation import Allocation
from ..criteria.base import PruneContext, comparable, score_groups
from .base import Schedule

if TYPE_CHECKING:
    from ..base import Pruner


class Iterative(Schedule):
    """Remove a few channels per round, globally ranked, with fine-tuning between rounds.

    Args:
        channels_per_step: channels removed per round (the paper removes one feature map at a
            time); default: the total cut spread over ``rounds`` rounds.
        rounds: rounds used when ``channels_per_step`` is not given.
        finetune_steps: training steps with ``context.finetune`` between rounds.
        momentum: weight of the previous round's scores, ``m * old + (1 - m) * new``.
        flops_penalty: lambda of Molchanov 2017's FLOPs regularisation: a channel's comparable
            score minus lambda times the MFLOPs (2 x MACs / 1e6, one image) its removal saves.
    """

    def __init__(self, *, channels_per_step: int | None = None, rounds: int = 10, finetune_steps: int = 30,
                 momentum: float = 0.0, flops_penalty: float = 0.0) -> None:
        self.channels_per_step, self.rounds = channels_per_step, rounds
        self.finetune_steps, self.momentum, self.flops_penalty = finetune_steps, momentum, flops_penalty
        self.rounds_done = 0

    def run(self, pruner: Pruner, model: nn.Module, context: PruneContext) -> nn.Module:
        """Returns ``model`` (or what ``context.finetune`` returned), physically pruned, in its train/eval mode."""
        if self.finetune_steps and context.finetune is None:
            warnings.warn(f"{pruner.name}: no fine-tuning between rounds (finetune_steps={self.finetune_steps} "
                          "needs PruneContext(finetune=...); reid-prune prune provides it)", stacklevel=3)
        was_training = model.training
        pruner.setup(model)
        session, criterion = pruner.session, pruner.criterion
        counts, previous, step = pruner.keep_counts, None, None
        self.rounds_done = 0
        while True:
            scores = score_groups(criterion, model, session.groups, context)
            if previous is not None and self.momentum > 0:
                scores = {k: self.momentum * previous[k] + (1 - self.momentum) * v for k, v in scores.items()}
            ranked = self.penalised(pruner, model, comparable(criterion, scores))
            if pruner.allocation.dynamic:  # the penalised ranking is the paper's global ranking: it sets the widths
                counts = pruner.allocate(model, ranked=ranked)
            candidates = lowest_channels(ranked, {g.name: g.channels - counts[g.name] for g in session.groups})
            if not candidates:
                break
            if step is None:
                step = self.channels_per_step or max(1, math.ceil(len(candidates) / self.rounds))
            drop: dict[str, set[int]] = {}
            for name, channel in candidates[:step]:
                drop.setdefault(name, set()).add(channel)
            plan = {name: [c for c in range(session.group(name).channels) if c not in idx]
                    for name, idx in drop.items()}
            session.cut(model, plan)
            self.rounds_done += 1
            previous = {k: v[plan[k]] if k in plan else v for k, v in scores.items()}
            if len(candidates) > step and context.finetune is not None and self.finetune_steps > 0:
                model = context.finetune(model, self.finetune_steps)
        pruner.keep_counts = session.widths()
        return model.train(was_training)

    def planned_steps(self, pruner: Pruner, model: nn.Module) -> int:
        """``finetune_steps`` after every round but the last, for the rounds planned on ``model``: ``rounds``, or the
        channels to remove over ``channels_per_step``. The widths fixed before any score give that count exactly;
        a global allocation re-plans every round on the pruned network, so its count is an estimate from the
        uniform plan of the same target (of ``rounds`` for a latency target), and it may take more rounds
        (measured: 11-12 for ``rounds=10`` on ResNet-18)."""
        if not self.channels_per_step or (pruner.allocation.dynamic and pruner.target.latency is not None):
            return self.finetune_steps * max(self.rounds - 1, 0)
        pruner.setup(model)
        session, counts = pruner.session, pruner.keep_counts
        if not counts:
            counts = Allocation("uniform").keep_counts(session.groups, pruner.target, session.full_cost,
                                                       min_channels=pruner.min_channels, round_to=pruner.round_to)
        removed = sum(g.channels - counts[g.name] for g in session.groups)
        return self.finetune_steps * max(math.ceil(removed / self.channels_per_step) - 1, 0)

    def penalised(self, pruner: Pruner, model: nn.Module, ranked: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Comparable scores minus ``flops_penalty`` x the MFLOPs one channel of each group costs."""
        if self.flops_penalty == 0:
            return dict(ranked)
        cost = pruner.session.cost(model)
        full = cost.macs()
        out = {}
        for g in pruner.session.groups:
            saved = full - cost.macs({g.name: g.channels - 1}) if g.channels > 1 else 0
            out[g.name] = ranked[g.name] - self.flops_penalty * 2 * saved / 1e6
        return out

    def summary(self, pruner: Pruner) -> dict[str, Any]:
        return {"rounds": self.rounds_done}


def lowest_channels(scores: Mapping[str, Tensor], cut: Mapping[str, int]) -> list[tuple[str, int]]:
    """The channels to remove, lowest score first: each group's ``cut[g]`` lowest, merged across groups.

    Args:
        scores: {group: (channels,)} comparable across groups.
        cut: how many channels each group still loses.

    Returns:
        [(group, channel index)], ascending by score; equal scores go in group order, then by
        channel index.
    """
    entries = []
    for position, (name, value) in enumerate(scores.items()):
        if cut.get(name, 0) > 0:
            order = torch.argsort(value.double().cpu(), stable=True)[: cut[name]]
            entries += [(float(value[i]), position, int(i), name) for i in order]
    entries.sort()
    return [(name, channel) for _, _, channel, name in entries]
