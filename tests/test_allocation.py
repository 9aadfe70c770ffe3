"""Per-group rates from sensitivity curves: against exhaustive search, budget use, rate round trips, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reid_prune.analysis.allocation import allocate_rates, rate_for_keep
from reid_prune.pruners.budget import keep_counts_for_rate
from reid_prune.pruners.groups import ChannelGroup


def group(name: str, channels: int) -> ChannelGroup:
    return ChannelGroup(name, "internal", [name], [], [], channels, "layer1")


def predicted(points: list[tuple[int, float]], channels: int, keep: int) -> float:
    """Linear interpolation of a monotone curve given as (kept, drop), with no drop at full width."""
    xs, ys = zip(*sorted(points + [(channels, 0.0)]))
    return float(np.interp(keep, xs, ys))


def exhaustive(curves, channels, macs_fraction, target):
    """(least summed loss, widths) over every width from the smallest swept one to full, within the budget."""
    names = list(curves)
    ranges = [range(min(k for k, _ in curves[g]), channels[g] + 1) for g in names]
    best = None
    for widths in itertools.product(*ranges):
        keep = dict(zip(names, widths))
        if macs_fraction(keep) <= target + 1e-12:
            loss = sum(predicted(curves[g], channels[g], keep[g]) for g in names)
            if best is None or loss < best[0] - 1e-12:
                best = (loss, keep)
    return best


# Three groups; "a" is steep at first and flat later, "b" flat then steep, "c" linear.
CURVES = {"a": [(6, 4.0), (4, 5.0), (2, 5.5)], "b": [(6, 0.5), (4, 1.0), (2, 9.0)], "c": [(8, 1.5), (5, 3.0), (2, 6.0)]}
CHANNELS = {"a": 8, "b": 8, "c": 10}


def test_matches_exhaustive_search_when_costs_add_up():
    # MACs = sum of per-channel costs + a fixed part, so savings add up exactly.
    per_channel = {"a": 3.0, "b": 5.0, "c": 2.0}
    full = sum(per_channel[g] * CHANNELS[g] for g in CHANNELS) + 20.0

    def macs_fraction(keep):
        return (sum(per_channel[g] * keep.get(g, CHANNELS[g]) for g in CHANNELS) + 20.0) / full

    for target in (0.8, 0.6, 0.45):
        loss, keep = exhaustive(CURVES, CHANNELS, macs_fraction, target)
        found = allocate_rates(CURVES, CHANNELS, macs_fraction, target)
        assert found.predicted_drop == pytest.approx(loss, abs=1e-9)
        assert found.macs_fraction <= target
        assert found.macs_fraction == pytest.approx(macs_fraction(found.keep))


def test_matches_exhaustive_search_when_groups_share_layers():
    # A chain stem -> a -> b -> c -> head, as convs between groups cost out x in: savings overlap.
    def macs(keep):
        a, b, c = (keep.get(g, CHANNELS[g]) for g in "abc")
        return 27 * a + 9 * a * b + 9 * b * c + 4 * c

    full = macs({})
    for target in (0.7, 0.5, 0.35):
        loss, _ = exhaustive(CURVES, CHANNELS, lambda k: macs(k) / full, target)
        found = allocate_rates(CURVES, CHANNELS, lambda k: macs(k) / full, target)
        assert found.predicted_drop == pytest.approx(loss, abs=1e-9)
        assert macs(found.keep) / full <= target


def test_uses_the_budget_when_pruning_measures_no_loss():
    # Flat (or noisy, negative) drops predict no loss: the widths must still fill the budget, not overshoot it.
    curves = {"a": [(4, -1.0), (2, 0.0)], "b": [(5, 0.0), (2, -0.5)]}
    channels = {"a": 8, "b": 10}

    def macs_fraction(keep):
        return (keep.get("a", 8) * 4 + keep.get("b", 10) * 3 + 10) / (8 * 4 + 10 * 3 + 10)

    found = allocate_rates(curves, channels, macs_fraction, 0.6)
    assert found.predicted_drop == 0.0
    # One more channel of either group would cost 3/72 or 4/72 of the MACs: the fraction is within that of 0.6.
    assert 0.6 - 3 / 72 < found.macs_fraction <= 0.6


def test_rates_give_the_widths_back_through_keep_counts_for_rate():
    for channels in (7, 48, 64, 100, 2048):
        for keep in range(1, channels + 1, max(1, channels // 37)):
            rate = rate_for_keep(channels, keep)
            assert keep_counts_for_rate([group("g", channels)], {"g": rate})["g"] == keep
    # The shortest decimal: floor(48 x 0.36) = 17, while 0.6 and 0.7 keep floor(19.2) = 19 and floor(14.4) = 14.
    assert rate_for_keep(48, 17) == 0.64
    assert rate_for_keep(64, 32) == 0.5 and rate_for_keep(64, 64) == 0.0
    # Rates are read as the decimals they print as: 0.57 keeps exactly 43 of 100 (not 44 through float error).
    assert rate_for_keep(100, 43) == 0.57


def test_round_to_widths_are_multiples():
    curves = {"a": [(32, 1.0), (16, 3.0)], "b": [(48, 0.2), (24, 4.0)]}
    channels = {"a": 64, "b": 96}
    found = allocate_rates(curves, channels, lambda k: (k.get("a", 64) + 2 * k.get("b", 96)) / 256, 0.6, round_to=8)
    assert all(k % 8 == 0 for k in found.keep.values())
    groups = [group("a", 64), group("b", 96)]
    assert keep_counts_for_rate(groups, found.rates, round_to=8) == found.keep


def test_unreachable_budget_names_the_smallest_reachable_fraction():
    # Smallest swept widths a = b = 2 of 8 keep (2 + 2 + 3) / (8 + 8 + 3) = 7/19 = 0.368 of the MACs.
    with pytest.raises(ValueError, match=r"budget of 0\.3 cannot be met.*keeps 0\.368"):
        allocate_rates({"a": [(2, 1.0)], "b": [(2, 1.0)]}, {"a": 8, "b": 8},
                       lambda k: (k.get("a", 8) + k.get("b", 8) + 3) / 19, 0.3)
