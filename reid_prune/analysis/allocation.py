"""Per-group prune rates that meet a MACs budget with the least predicted mAP loss.

Li et al. ("Pruning Filters for Efficient ConvNets", Sec. 4) prune each layer alone, look
at the accuracy curves and prune the insensitive layers harder. This module makes that
choice from the measured curves of :mod:`~reid_prune.jobs.sensitivity`:

* the **predicted loss** of a group kept at ``k`` channels is its measured mAP drop,
  linearly interpolated in ``k`` between the swept points (and 0 at full width), after
  taking for each swept width the largest drop measured at it or any wider width: a
  narrower layer is never predicted to lose less (without fine-tuning, a measured gain
  is evaluation noise). The loss of a model is the sum over its groups (pruning effects
  are taken as additive, the usual first-order assumption). Widths below the smallest
  swept one are never chosen;
* the **cost** is the exact MAC count of the model with those widths (a callable, e.g.
  :class:`~reid_prune.pruners.cost.CostModel`), which is not additive: a conv between two
  pruned groups costs ``out * in``.

Two searches start the solution, and the one with the smaller predicted loss is kept:

1. a **knapsack**: if MAC savings added up over groups, choosing one width per group is a
   multiple-choice knapsack, solved exactly by dynamic programming over the saving (in
   ``KNAPSACK_BINS`` steps). The true cost of its answer is then checked; where savings
   overlapped and the budget is missed, the required saving is raised by the shortfall
   and the knapsack solved again;
2. a **greedy** descent: from full width, repeatedly cut the group whose cut costs the
   least predicted loss per MAC saved, one step (``round_to`` channels) or straight to a
   lower swept width, so a curve that is steep at first and flat later is still cut through.

Both are then polished with the exact cost: widen single groups while the budget allows
(the loss never rises by widening, so the budget ends up used: no group can be widened
one step more), and exchange width between two groups (widen one, cut another) while
that lowers the loss within the budget. The answer keeps at most ``target`` of the MACs,
and less only by less than one step of one group. It is exact when the cost is a sum over groups (up to the knapsack's resolution),
and a good local optimum otherwise; tests/test_allocation.py checks both against
exhaustive search on small cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from ..pruners.budget import kept

EPS = 1e-9
KNAPSACK_BINS = 4000  # resolution of the summed-savings table


@dataclass
class Allocation:
    """The chosen widths.

    Attributes:
        keep: {group: channels kept}.
        rates: {group: fraction pruned}, the shortest decimals that give ``keep`` back through
            :func:`~reid_prune.pruners.budget.keep_counts_for_rate`.
        macs_fraction: MACs kept, as a fraction of the full model's.
        predicted_drop: summed predicted mAP loss, in the units of the curves (mAP points).
    """

    keep: dict[str, int]
    rates: dict[str, float]
    macs_fraction: float
    predicted_drop: float


def check_budget(smallest: Mapping[str, int], macs_fraction: Callable[[Mapping[str, int]], float],
                 target: float) -> None:
    """Raise a ValueError naming the smallest reachable fraction if even the ``smallest`` widths exceed ``target``."""
    if not 0 < target <= 1:
        raise ValueError(f"target_macs: the fraction of MACs to keep must be in (0, 1], got {target}")
    reachable = macs_fraction(smallest)
    if reachable > target + EPS:
        raise ValueError(
            f"a MACs budget of {target:.4g} cannot be met: with every group at its smallest swept width the model "
            f"keeps {reachable:.3g} of its MACs; sweep higher rates (--rates) or prune more groups (--scope all)")


def rate_for_keep(channels: int, keep: int) -> float:
    """The shortest decimal ``rate`` that keeps exactly ``keep`` of ``channels`` channels.

    Under the rounding rule :func:`~reid_prune.pruners.budget.kept`, floor(C (1 - rate)) with
    the rate read as the decimal it prints as, so a reader of the YAML computes the same width.

    >>> rate_for_keep(64, 32), rate_for_keep(48, 17), rate_for_keep(100, 43)
    (0.5, 0.64, 0.57)
    """
    if not 1 <= keep <= channels:
        raise ValueError(f"keep must be in 1..{channels}, got {keep}")
    for digits in range(0, 12):
        scale = 10**digits
        n = (channels - keep) * scale // channels  # the largest n / scale <= 1 - keep / C
        if kept(channels, n / scale) == keep:
            return n / scale
    raise ArithmeticError(f"no decimal rate keeps {keep} of {channels} channels")  # unreachable: 11 digits suffice


class _Curve:
    """Predicted loss of one group as a function of its kept channels, and the widths it may take."""

    def __init__(self, name: str, channels: int, points: Sequence[tuple[int, float]], min_channels: int,
                 round_to: int) -> None:
        by_keep: dict[int, list[float]] = {channels: [0.0]}
        for keep, drop in points:
            if not 1 <= keep <= channels:
                raise ValueError(f"group {name!r}: a measured width of {keep} is outside 1..{channels}")
            by_keep.setdefault(int(keep), []).append(float(drop))
        self.xs = np.array(sorted(by_keep), dtype=np.float64)
        measured = np.array([np.mean(by_keep[int(k)]) for k in self.xs])
        # The largest drop at this width or any wider one (0 at full width): non-increasing in the width.
        self.ys = np.maximum.accumulate(measured[::-1])[::-1]
        lowest = max(int(self.xs[0]), math.ceil(max(min_channels, 1) / round_to) * round_to)
        steps = {k for k in range(round_to, channels + 1, round_to) if k >= lowest}
        self.widths = sorted(steps | {channels} | {int(k) for k in self.xs if k >= lowest})
        self.swept = set(int(k) for k in self.xs)

    def loss(self, keep: int) -> float:
        return float(np.interp(keep, self.xs, self.ys))

    def moves(self, keep: int, *, down: bool) -> list[int]:
        """Widths reachable from ``keep`` in one move: the next allowed width, or any swept width, that way."""
        i = self.widths.index(keep)
        if down:
            near, far = self.widths[i - 1: i], [k for k in self.widths[: i - 1] if k in self.swept]
        else:
            near, far = self.widths[i + 1: i + 2], [k for k in self.widths[i + 2:] if k in self.swept]
        return near + far


def allocate_rates(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    channels: Mapping[str, int],
    macs_fraction: Callable[[Mapping[str, int]], float],
    target: float,
    *,
    min_channels: int = 1,
    round_to: int = 1,
) -> Allocation:
    """Widths for every group of ``curves`` with MACs <= ``target`` and the least predicted loss found.

    Args:
        curves: {group: [(channels kept, mAP drop in points), ...]}: the measured sweep.
        channels: {group: full width}.
        macs_fraction: MACs of the model with {group: kept} (others at full width), as a
            fraction of the full model's; must fall as any width falls.
        target: the fraction of MACs to keep, in (0, 1].
        min_channels, round_to: as in :func:`~reid_prune.pruners.budget.keep_counts_for_rate`
            (kept widths are multiples of ``round_to`` or the full width).

    Returns:
        An :class:`Allocation` with ``macs_fraction <= target``.

    Raises:
        ValueError: a target outside (0, 1], a group without its width, or a target that
            even the smallest swept widths do not reach (the message gives the smallest reachable).
    """
    missing = sorted(set(curves) - set(channels))
    if missing:
        raise ValueError(f"no full width given for groups {missing[:5]}")
    model = {g: _Curve(g, channels[g], pts, min_channels, round_to) for g, pts in curves.items()}
    keep = {g: channels[g] for g in model}
    check_budget({g: c.widths[0] for g, c in model.items()}, macs_fraction, target)

    def loss(counts: Mapping[str, int]) -> float:
        return sum(model[g].loss(k) for g, k in counts.items())

    starts = [_greedy_cuts(model, keep, macs_fraction, target), _knapsack(model, keep, macs_fraction, target)]
    for start in starts:
        while _give_back(model, start, macs_fraction, target) or _exchange(model, start, macs_fraction, target):
            pass
    keep = min(starts, key=loss)
    rates = {g: rate_for_keep(channels[g], k) for g, k in keep.items()}
    return Allocation(keep, rates, macs_fraction(keep), loss(keep))


def _greedy_cuts(model: Mapping[str, _Curve], full: Mapping[str, int], macs_fraction, target: float) -> dict[str, int]:
    """From ``full``, cut the group that costs the least loss per MAC saved until within the budget."""
    keep = dict(full)
    cost = macs_fraction(keep)
    while cost > target + EPS:
        best = None
        for g, curve in model.items():
            for k in curve.moves(keep[g], down=True):
                trial = macs_fraction({**keep, g: k})
                saving = cost - trial
                if saving <= 0:
                    continue
                score = (curve.loss(k) - curve.loss(keep[g])) / saving
                if best is None or (score, -saving) < best[0]:
                    best = ((score, -saving), g, k, trial)
        _, g, k, cost = best  # not None: the smallest widths reach the target
        keep[g] = k
    return keep


def _knapsack(model: Mapping[str, _Curve], full: Mapping[str, int], macs_fraction, target: float,
              bins: int = KNAPSACK_BINS) -> dict[str, int]:
    """Least-loss widths if MAC savings added up (a multiple-choice knapsack, by dynamic programming).

    Each width's saving is measured with the other groups at full width and rounded down to
    ``(1 - target) / bins`` units. Savings of two groups that share a layer overlap, so the
    true cost of the answer can exceed the target: the required saving is then raised by
    the shortfall and the knapsack solved again (a few rounds); what is left is cut greedily.
    """
    base = macs_fraction(full)
    options = {g: [(k, base - macs_fraction({**full, g: k}), c.loss(k)) for k in c.widths] for g, c in model.items()}
    required = base - target
    keep = dict(full)
    if required <= EPS:
        return keep
    for _ in range(8):
        unit = required / bins
        best = np.full(bins + 1, np.inf)  # best[j]: least loss of the groups so far saving >= j units
        best[0] = 0.0
        tables = []
        for g, opts in options.items():
            new, pick, prev = np.full(bins + 1, np.inf), np.zeros(bins + 1, np.int64), np.zeros(bins + 1, np.int64)
            for i, (_, saving, loss) in enumerate(opts):
                units = min(bins, int(saving / unit + EPS))
                src = np.arange(bins + 1) - units
                reached = np.full(bins + 1, np.inf)
                reached[units:] = best[src[units:]]
                # Savings past the table's end count as the full saving: the cap takes the best of them.
                tail = bins - units + int(np.argmin(best[bins - units:]))
                if best[tail] < reached[bins]:
                    reached[bins], src[bins] = best[tail], tail
                better = reached + loss < new
                new[better], pick[better], prev[better] = reached[better] + loss, i, src[better]
            tables.append((g, pick, prev))
            best = new
        if not np.isfinite(best[bins]):
            break
        j = bins
        for g, pick, prev in reversed(tables):  # walk the tables back from the full saving
            keep[g] = options[g][pick[j]][0]
            j = prev[j]
        shortfall = macs_fraction(keep) - target
        if shortfall <= EPS:
            return keep
        required += shortfall
    return _greedy_cuts(model, keep, macs_fraction, target)


def _give_back(model: Mapping[str, _Curve], keep: dict[str, int], macs_fraction, target: float) -> bool:
    """Widen the group that lowers the loss most (then: uses the most budget) within the budget; False if none fits."""
    best = None
    for g, curve in model.items():
        for k in curve.moves(keep[g], down=False):
            trial = macs_fraction({**keep, g: k})
            if trial <= target + EPS:
                rank = (curve.loss(keep[g]) - curve.loss(k), trial)  # the gain is >= 0: curves never rise with k
                if best is None or rank > best[0]:
                    best = (rank, g, k)
    if best is None:
        return False
    keep[best[1]] = best[2]
    return True


def _exchange(model: Mapping[str, _Curve], keep: dict[str, int], macs_fraction, target: float) -> bool:
    """Widen one group and cut another one step if that lowers the loss within the budget; False if nothing does."""
    best = None
    for up, up_curve in model.items():
        for k_up in up_curve.moves(keep[up], down=False):
            gain = up_curve.loss(keep[up]) - up_curve.loss(k_up)
            for down, down_curve in model.items():
                if down == up:
                    continue
                for k_down in down_curve.moves(keep[down], down=True):
                    change = gain - (down_curve.loss(k_down) - down_curve.loss(keep[down]))
                    if change > EPS and (best is None or change > best[0]) and \
                            macs_fraction({**keep, up: k_up, down: k_down}) <= target + EPS:
                        best = (change, up, k_up, down, k_down)
    if best is None:
        return False
    _, up, k_up, down, k_down = best
    keep[up], keep[down] = k_up, k_down
    return True
