"""The one owner of a model's channel groups while it is pruned.

Schedules never call surgery or trace the model themselves: a :class:`PruningSession`
finds the groups, cuts a plan (then runs the criterion's refit, if any), zeroes channels
for soft schedules, and finds the groups again after every cut, checking that their
names (which plans and per-group rates refer to) did not change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .cost import CostModel
from .criteria.base import Selection
from .groups import ChannelGroup, find_channel_groups
from .surgery import apply_plan, zero_group


class PruningSession:
    """Channel groups of one model, kept current across cuts.

    Args:
        model: the network (any width).
        scope: ``internal`` or ``all`` (see :func:`~.groups.find_channel_groups`).
        include: ``include_stem``, ``include_downsample``, ``include_last_stage`` for scope ``all``.
        input_size: (H, W) at which MACs are counted.

    Raises:
        ValueError: the model has no prunable group at this scope.
    """

    def __init__(self, model: nn.Module, *, scope: str, include: Mapping[str, bool],
                 input_size: tuple[int, int]) -> None:
        self.scope, self.include, self.input_size = scope, dict(include), tuple(input_size)
        self.groups: list[ChannelGroup] = find_channel_groups(model, scope=scope, **self.include)
        if not self.groups:
            raise ValueError(f"no prunable channel groups in this model at scope {scope!r}")
        self.full_cost = CostModel(model, self.input_size)  # the model before any cut: budgets refer to it
        self.start_widths = self.widths()

    def group(self, name: str) -> ChannelGroup:
        return next(g for g in self.groups if g.name == name)

    def widths(self) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups}

    def cost(self, model: nn.Module) -> CostModel:
        """The cost model of ``model`` at its current widths."""
        return CostModel(model, self.input_size)

    def cut(self, model: nn.Module, selection: Selection | Mapping[str, Sequence[int]]) -> None:
        """Remove every channel a plan does not keep, run the selection's refit, and find the groups again."""
        plan = selection.plan if isinstance(selection, Selection) else selection
        plan = {name: keep for name, keep in plan.items() if len(keep) < self.group(name).channels}
        if plan:
            apply_plan(model, self.groups, plan)
        if isinstance(selection, Selection) and selection.refit is not None:
            selection.refit(model)
        if plan:
            self.refresh(model)

    def refresh(self, model: nn.Module) -> None:
        """Find the groups again at the model's current widths (after surgery, or on a resumed model)."""
        names = [g.name for g in self.groups]
        self.groups = find_channel_groups(model, scope=self.scope, **self.include)
        if [g.name for g in self.groups] != names:
            raise RuntimeError(f"channel groups changed after surgery: {names} -> {[g.name for g in self.groups]}")

    def zero(self, model: nn.Module, drop: Mapping[str, Sequence[int]], *, norms: bool) -> None:
        """Zero channels without removing them: the producers' filters, and with ``norms`` the BN affine too."""
        with torch.no_grad():
            for g in self.groups:
                if drop.get(g.name):
                    zero_group(model, g, drop[g.name], norms=norms)
