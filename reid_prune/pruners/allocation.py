"""How much each group keeps: the pruning target, and the allocations that turn it into keep counts.

A :class:`Target` is what the user asks for: a prune ``rate`` (fraction of channels pruned),
explicit ``layer_rates``, or the fraction of the model's MACs, parameters or latency to keep.
An allocation turns it into {group name: channels kept}:

* ``uniform``: one prune rate for every group, solved for a MACs/params/latency budget by
  bisection (:func:`~.budget.keep_counts_for_budget`).
* ``global``: every channel of every group ranked together by its normalised score
  (:func:`~.criteria.base.comparable`), the lowest cut until the target is met, no group
  below ``min_channels``, counts rounded to ``round_to``. This is the global ranking of
  Molchanov et al. (ICLR 2017) and Torch-Pruning's ``global_pruning``.
* ``layer_rates``: explicit per-group prune rates, e.g. from a sensitivity analysis.

Every kept count follows one rounding rule, :func:`~.budget.kept`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from .budget import (LatencyMeasure, _bounds, _check_rate, _check_rounding, _round_keep, budget_problem,
                     kept, keep_counts_for_budget, keep_counts_for_rate)
from .cost import CostModel
from .groups import ChannelGroup

ALLOCATIONS = ("uniform", "global", "layer_rates")
BUDGETS = ("macs", "params", "latency")  # the Target fields that are fractions kept


@dataclass(frozen=True)
class Target:
    """What the pruned model keeps; exactly one field is set.

    Attributes:
        rate: fraction of channels PRUNED in [0, 1).
        layer_rates: {group name: fraction pruned}; groups not named keep every channel.
        macs, params: fraction of the model's MACs / parameters KEPT, in (0, 1].
        latency: fraction of the model's measured latency KEPT, in (0, 1] (:mod:`.latency`).
    """

    rate: float | None = None
    layer_rates: Mapping[str, float] | None = None
    macs: float | None = None
    params: float | None = None
    latency: float | None = None

    def __post_init__(self) -> None:
        given = [k if k in ("rate", "layer_rates") else f"target_{k}"
                 for k in ("rate", "layer_rates", *BUDGETS) if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one target: rate, layer_rates, target_macs, target_params or target_latency "
                             "(on the command line --rate, --layer-rates, --target-macs, --target-params, "
                             f"--target-latency); got {', '.join(given) or 'none'}")
        if self.rate is not None:
            _check_rate(self.rate, "prune rate")
        for key in BUDGETS:
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"target_{key} must be a fraction kept in (0, 1], got {value}")

    @property
    def is_budget(self) -> bool:
        return any(getattr(self, key) is not None for key in BUDGETS)

    def budget(self) -> dict[str, float | None]:
        """The budget as :func:`~.budget.budget_problem`'s keywords: target_macs, target_params, target_latency."""
        return {f"target_{key}": getattr(self, key) for key in BUDGETS}

    def rescaled(self, start: Mapping[str, int], now: Mapping[str, int], full: CostModel, cost: CostModel) -> Target:
        """The same absolute target for a partly pruned model, so an allocation can be planned again on it.

        Args:
            start, now: the selected groups' widths before any cut and now.
            full, cost: cost models of the model before any cut and now.

        A budget becomes a fraction of the current cost (1 when already met); a rate keeps
        floor(total (1 - rate)) of the groups' channels at the start, so it becomes the exact
        fraction that leaves that many of the current ones. Per-group rates, and latency
        budgets (always predicted against the model at setup), are returned as they are.
        """
        if self.macs is not None:
            return Target(macs=min(1.0, self.macs * full.macs() / cost.macs()))
        if self.params is not None:
            return Target(params=min(1.0, self.params * full.params() / cost.params()))
        if self.rate is not None and dict(start) != dict(now):
            total = sum(now.values())
            return Target(rate=max(Fraction(0), 1 - Fraction(min(kept(sum(start.values()), self.rate), total), total)))
        return self


@dataclass(frozen=True)
class Allocation:
    """Turns a :class:`Target` into keep counts. ``kind`` is one of :data:`ALLOCATIONS`.

    Attributes:
        needs_scores: the counts depend on the criterion's (comparable) scores.
        dynamic: iterative schedules re-plan it on the current network every round, so the
            ranking decides where channels go; otherwise the counts are fixed once.
    """

    kind: str = "uniform"

    def __post_init__(self) -> None:
        if self.kind not in ALLOCATIONS:
            raise ValueError(f"allocation: expected one of {', '.join(ALLOCATIONS)}, got {self.kind!r}")

    @property
    def needs_scores(self) -> bool:
        return self.kind == "global"

    @property
    def dynamic(self) -> bool:
        return self.kind == "global"

    def check(self, target: Target) -> None:
        """Refuse a target this allocation cannot serve."""
        if self.kind == "layer_rates" and target.layer_rates is None:
            raise ValueError("allocation 'layer_rates' takes its rates from a file: give layer_rates "
                             "(--layer-rates FILE, e.g. the layer_rates.yaml of reid-prune sensitivity) instead of "
                             "another target, or choose allocation uniform or global")
        if target.layer_rates is not None and self.kind != "layer_rates":
            raise ValueError(f"per-group rates (layer_rates) set every group's width themselves: drop allocation "
                             f"{self.kind!r}, or drop layer_rates to let {self.kind!r} decide")

    def keep_counts(self, groups: Sequence[ChannelGroup], target: Target, cost: CostModel,
                    scores: Mapping[str, Tensor] | None = None, *, min_channels: int = 1,
                    round_to: int = 1, latency: LatencyMeasure | None = None) -> dict[str, int]:
        """{group name: channels kept} for ``target`` on the model ``cost`` was built on.

        Args:
            groups: the groups that may be cut, at their current widths.
            target: what to keep; budgets are fractions of ``cost``'s model as it is now.
            cost: the model's cost model.
            scores: comparable scores of every channel of ``groups`` (``global`` only).
            min_channels, round_to: per-group floor and granularity.
            latency: the predicted latency fraction (:class:`~.latency.LatencyCost`) of the model at
                setup, for a latency target.

        Raises:
            ValueError: an unreachable budget (naming the smallest reachable fraction), unknown
                group names in layer_rates, or ``global`` without scores.
        """
        self.check(target)
        if self.kind == "layer_rates":
            names = {g.name for g in groups}
            unknown = sorted(set(target.layer_rates) - names)
            if unknown:
                hint = (" (residual-stream groups are pruned only with scope all: --scope all)"
                        if any(name.startswith("stream.") for name in unknown) else "")
                raise ValueError(f"layer_rates names unknown groups {unknown[:3]}{hint}; the groups are: "
                                 f"{', '.join(sorted(names))}")
            return keep_counts_for_rate(groups, target.layer_rates, min_channels=min_channels, round_to=round_to)
        if self.kind == "uniform":
            if target.rate is not None:
                return keep_counts_for_rate(groups, target.rate, min_channels=min_channels, round_to=round_to)
            return keep_counts_for_budget(groups, cost, **target.budget(), latency=latency,
                                          min_channels=min_channels, round_to=round_to)
        if scores is None:
            raise ValueError("the global allocation ranks channels by their scores: pass scores")
        return global_keep_counts(groups, target, cost, scores, min_channels=min_channels, round_to=round_to,
                                  latency=latency)


def global_keep_counts(groups: Sequence[ChannelGroup], target: Target, cost: CostModel,
                       scores: Mapping[str, Tensor], *, min_channels: int = 1, round_to: int = 1,
                       tolerance: float = 0.02, latency: LatencyMeasure | None = None) -> dict[str, int]:
    """Cut the lowest-scoring channels of all groups together until ``target`` is met.

    Each group offers its channels in ascending score order, except the ``min_channels``
    (rounded up to ``round_to``) it must keep; the offers of all groups are merged in
    ascending order (ties: group order, then score order), and the first n are removed:

    * a ``rate`` removes n = total - floor(total (1 - rate)) of the groups' channels;
    * a MACs / params / latency budget takes the smallest n that meets it (the cost falls
      monotonically with n, so n is found by bisection; latency as ``latency`` predicts it).

    The counts are then rounded to the nearest multiple of ``round_to`` and, for a budget,
    single groups are moved one ``round_to`` step toward the target until within
    ``tolerance`` (as the uniform budget does).

    Returns:
        {group name: channels kept}.
    """
    _check_rounding(min_channels, round_to)
    channels = {g.name: g.channels for g in groups}
    lowest = {g.name: _bounds(g.channels, min_channels, round_to) for g in groups}
    offers = []  # (score, group position, position in the group's ascending order)
    for position, g in enumerate(groups):
        ascending = torch.sort(scores[g.name].double().cpu(), stable=True).values
        offers += [(float(ascending[i]), position, i) for i in range(g.channels - lowest[g.name])]
    offers.sort()
    owner = torch.tensor([o[1] for o in offers], dtype=torch.long)

    def counts(n: int) -> dict[str, int]:
        removed = torch.bincount(owner[:n], minlength=len(groups)).tolist()
        return {g.name: g.channels - removed[i] for i, g in enumerate(groups)}

    def rounded(c: Mapping[str, int]) -> dict[str, int]:
        return {k: _round_keep(v, channels[k], min_channels, round_to) for k, v in c.items()}

    if target.rate is not None:
        total = sum(channels.values())
        return rounded(counts(min(total - kept(total, target.rate), len(offers))))
    problem = budget_problem(groups, cost, **target.budget(), latency=latency, min_channels=min_channels,
                             round_to=round_to, tolerance=tolerance)
    low, high = 0, len(offers)  # fraction(counts(high)) <= target + tolerance (checked by budget_problem)
    while low < high:
        mid = (low + high) // 2
        if problem.fraction(counts(mid)) > problem.target:
            low = mid + 1
        else:
            high = mid
    candidates = [counts(n) for n in {max(low - 1, 0), low}]
    return problem.adjust(min((rounded(c) for c in candidates), key=problem.error))
