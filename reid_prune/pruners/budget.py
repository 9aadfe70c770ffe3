"""How many channels each group keeps: from a prune rate, per-group rates, or a MACs/params/latency budget.

Rates are the fraction PRUNED; budget targets are the fraction KEPT of the whole model's
MACs, parameters or latency (``target_macs=0.5`` keeps half the MACs). MACs and parameters
come from :class:`~.cost.CostModel`; latency is predicted by :class:`~.latency.LatencyCost`,
which this module sees only through :class:`LatencyMeasure`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

from .cost import CostModel
from .groups import ChannelGroup


def kept(channels: int, rate: float | Fraction) -> int:
    """The one rounding rule for kept counts: a group of C channels pruned at ``rate`` keeps floor(C (1 - rate)).

    This is ThiNet's ``int(C * compression_rate)`` and the L1-norm reference's
    ``int(C * (1 - prune_prob))``; SFP / FPGM's code prunes ``int(C * rate)`` instead, which
    keeps one more channel when C * rate is fractional (docs/pruners.md). The rate is read as
    the decimal it prints as (a Fraction exactly), so 0.9 of 10 channels keeps exactly 1, not 0
    through float error.
    """
    exact = rate if isinstance(rate, Fraction) else Fraction(repr(float(rate)))
    return math.floor(channels * (1 - exact))


def _bounds(channels: int, min_channels: int, round_to: int) -> int:
    """The fewest channels a group may keep: min_channels rounded up to a multiple of round_to, at most all."""
    return min(channels, math.ceil(max(min_channels, 1) / round_to) * round_to)


def _round_keep(keep: int, channels: int, min_channels: int, round_to: int) -> int:
    """``keep`` rounded to the nearest multiple of ``round_to`` (halves round up), clamped to the bounds."""
    rounded = (2 * keep + round_to) // (2 * round_to) * round_to
    return max(_bounds(channels, min_channels, round_to), min(channels, rounded))


def _check_rounding(min_channels: int, round_to: int) -> None:
    if min_channels < 1:
        raise ValueError(f"min_channels must be >= 1, got {min_channels}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")


def _check_rate(rate: float | Fraction, what: str) -> float | Fraction:
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{what}: a prune rate is the fraction of channels removed, in [0, 1); got {rate!r}")
    return rate


def keep_counts_for_rate(
    groups: Sequence[ChannelGroup],
    rate: float | Mapping[str, float],
    *,
    min_channels: int = 1,
    round_to: int = 1,
) -> dict[str, int]:
    """Channels each group keeps when a fraction ``rate`` of them is pruned.

    ``keep = floor(channels * (1 - rate))`` (:func:`kept`), then rounded to the NEAREST multiple of
    ``round_to`` (a tie rounds up, keeping more), and clamped to
    ``[min_channels rounded up to a multiple of round_to, channels]``: never zero, never more
    than the group has. A group whose width is not a multiple of ``round_to`` may keep all
    its channels when rounding would go past them.

    Args:
        groups: the groups to size.
        rate: the fraction PRUNED, one for every group, or {group name: rate} (groups not
            named keep all their channels).
        min_channels: the fewest channels a group keeps (>= 1).
        round_to: keep counts are multiples of this (e.g. 8 for tensor cores).

    Returns:
        {group name: channels kept}.

    Raises:
        ValueError: a rate outside [0, 1), an unknown group name, or min_channels / round_to < 1.
    """
    _check_rounding(min_channels, round_to)
    if isinstance(rate, Mapping):
        names = {g.name for g in groups}
        unknown = sorted(set(rate) - names)
        if unknown:
            raise ValueError(f"per-group rates name unknown groups {unknown[:5]}; known: {sorted(names)[:8]} ...")
        rates = {name: _check_rate(r, f"rate of group {name!r}") for name, r in rate.items()}
    else:
        rates = dict.fromkeys((g.name for g in groups), _check_rate(rate, "rate"))
    counts = {}
    for g in groups:
        keep = kept(g.channels, rates.get(g.name, 0.0))
        counts[g.name] = _round_keep(keep, g.channels, min_channels, round_to)
    return counts


def keep_counts_for_budget(
    groups: Sequence[ChannelGroup],
    cost: CostModel,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    latency: LatencyMeasure | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    tolerance: float = 0.02,
) -> dict[str, int]:
    """Channels each group keeps so the model keeps a fraction of its MACs, parameters or latency.

    First one prune rate, the same for every group in ``groups``, is found by bisection
    (the cost falls monotonically with the rate). Because keep counts are integers (and
    multiples of ``round_to``), a uniform rate can jump over the target; if the nearest one
    is still more than ``tolerance`` away, single groups are moved one ``round_to`` step at a
    time toward the target, each time taking the step that lands closest to it, until it is
    within tolerance.

    Args:
        groups: the groups that may be cut (others keep their width).
        cost: the :class:`CostModel` of the same model; it must know every group.
        target_macs: fraction of the model's current MACs to KEEP, in (0, 1].
        target_params: fraction of the model's current parameters to KEEP, in (0, 1].
        target_latency: fraction of the model's latency to KEEP, in (0, 1], as ``latency`` predicts it.
            Give exactly one of the three targets.
        latency: the predicted latency fraction of keep counts (a
            :class:`~.latency.LatencyCost`); needed by ``target_latency`` only.
        min_channels, round_to: as in :func:`keep_counts_for_rate`.
        tolerance: the largest accepted ``|cost(keep) / cost(full) - target|``.

    Returns:
        {group name: channels kept}, within ``tolerance`` of the target.

    Raises:
        ValueError: not exactly one target, a target outside (0, 1], a group unknown to
            ``cost``, or a target that cannot be reached even with every group at its
            minimum (the message gives the smallest reachable fraction).
    """
    problem = budget_problem(groups, cost, target_macs=target_macs, target_params=target_params,
                             target_latency=target_latency, latency=latency, min_channels=min_channels,
                             round_to=round_to, tolerance=tolerance)

    def at(rate: float) -> dict[str, int]:
        return keep_counts_for_rate(groups, rate, min_channels=min_channels, round_to=round_to)

    low, high = 0.0, math.nextafter(1.0, 0.0)  # fraction(at(low)) >= target >= fraction(at(high)) when reachable
    for _ in range(60):
        mid = (low + high) / 2
        if problem.fraction(at(mid)) > problem.target:
            low = mid
        else:
            high = mid
    return problem.adjust(min((at(low), at(high)), key=problem.error))


class LatencyMeasure(Protocol):
    """What a latency budget needs of a latency model: the predicted fraction kept (:class:`~.latency.LatencyCost`)."""

    def fraction(self, keep_counts: Mapping[str, int] | None = None) -> float: ...


@dataclass
class BudgetProblem:
    """A checked MACs, params or latency budget over some groups: what to measure and how close to land.

    Attributes:
        what: ``"MACs"``, ``"params"`` or ``"latency"``. target: the fraction to keep.
        fraction: keep counts -> the model's fraction of ``what`` kept.
        lowest: the fewest channels each group may keep (min_channels and round_to applied).
    """

    groups: Sequence[ChannelGroup]
    what: str
    target: float
    fraction: Callable[[Mapping[str, int]], float]
    lowest: dict[str, int]
    round_to: int
    tolerance: float

    def error(self, counts: Mapping[str, int]) -> float:
        return abs(self.fraction(counts) - self.target)

    def adjust(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Move single groups one ``round_to`` step at a time toward the target until within tolerance."""
        return _adjust(self.groups, dict(counts), self.lowest, self.round_to, self.fraction, self.target,
                       self.tolerance, self.what)


def budget_problem(groups: Sequence[ChannelGroup], cost: CostModel, *, target_macs: float | None = None,
                   target_params: float | None = None, target_latency: float | None = None,
                   latency: LatencyMeasure | None = None, min_channels: int = 1, round_to: int = 1,
                   tolerance: float = 0.02) -> BudgetProblem:
    """Check a budget (arguments as :func:`keep_counts_for_budget`) and that it can be met at all.

    The accepted error is ``tolerance`` (2 points of the fraction by default), and never more
    than a tenth of the target: keeping 0.002 of the MACs does not meet a target of 0.0001.

    Raises:
        ValueError: as :func:`keep_counts_for_budget`, or ``target_latency`` without ``latency``.
    """
    _check_rounding(min_channels, round_to)
    targets = {"MACs": target_macs, "params": target_params, "latency": target_latency}
    given = [what for what, value in targets.items() if value is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of target_macs, target_params and target_latency "
                         "(the fraction of the model to keep)")
    what, target = given[0], targets[given[0]]
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target_{what.lower()}: the fraction of {what} to keep must be in (0, 1], got {target!r}")
    tolerance = min(tolerance, target / 10)
    unknown = sorted({g.name for g in groups} - set(cost.channels))
    if unknown:
        raise ValueError(f"the cost model does not know groups {unknown[:5]}; build it on the same model")
    if what == "latency":
        if latency is None:
            raise ValueError("a latency budget needs the model's predicted latency: pass latency=LatencyCost(...)")
        fraction = latency.fraction
    else:
        measure = cost.macs if what == "MACs" else cost.params
        full = measure()

        def fraction(counts: Mapping[str, int]) -> float:
            return measure(counts) / full

    lowest = {g.name: _bounds(g.channels, min_channels, round_to) for g in groups}
    if fraction(lowest) > target + tolerance:
        predicted = " (predicted from this machine's timings)" if what == "latency" else ""
        busy = ("; timings taken on a busy machine predict too high: retry when it is quiet" if what == "latency"
                else "")
        raise ValueError(
            f"a {what} budget of {target:g} cannot be met: with every selected group at its minimum the model "
            f"keeps {fraction(lowest):.3g} of its {what}{predicted}. Prune more layers (scope=all if it is not "
            f"already, include_stem, include_downsample, include_last_stage) or lower min_channels / round_to{busy}"
        )
    return BudgetProblem(list(groups), what, target, fraction, lowest, round_to, tolerance)


def _adjust(groups, counts, lowest, round_to, fraction, target, tolerance, what) -> dict[str, int]:
    """Greedy one-step moves of single groups toward the target until within tolerance."""
    channels = {g.name: g.channels for g in groups}
    error = fraction(counts) - target
    while abs(error) > tolerance:
        best, best_error = None, abs(error)
        for name, k in counts.items():
            step = max(lowest[name], k - round_to) if error > 0 else min(channels[name], k + round_to)
            if step == k:
                continue
            trial_error = fraction({**counts, name: step}) - target
            if abs(trial_error) < best_error:
                best, best_error = (name, step, trial_error), abs(trial_error)
        if best is None:
            raise ValueError(
                f"could not bring the model within {tolerance:.3g} of a {what} fraction of {target:g} "
                f"(closest: {fraction(counts):.3g}); raise the tolerance or lower round_to"
            )
        counts[best[0]], error = best[1], best[2]
    return counts
