"""The latency cost model: table cache and reuse, interpolation and calibration against hand sums, solvers by brute force."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from reid_prune import build_model
from reid_prune.precision import ComputeSettings
from reid_prune.pruners import get_pruner, latency, latency_feedback, latency_table
from reid_prune.pruners.allocation import Target, global_keep_counts
from reid_prune.pruners.base import resolve_scope
from reid_prune.pruners.budget import budget_problem, keep_counts_for_budget
from reid_prune.pruners.cost import CostModel
from reid_prune.pruners.groups import ChannelGroup
from reid_prune.pruners.latency import LatencyCost, axis, monotone
from reid_prune.pruners.latency_feedback import Step, plan_to_measured
from reid_prune.pruners.latency_table import LatencySetting

CPU = ComputeSettings(torch.device("cpu"), "fp32", False)
SIZE = (8, 4)
NETWORK_MS = 5.0  # the whole network, "measured": more than its convs, so the calibration adds a constant


def tiny() -> tuple[nn.Module, CostModel, list[ChannelGroup]]:
    """4 -> conv3x3 -> a (16) -> conv3x3 -> b (16) -> conv1x1 -> 32: groups a and b, both 16 wide."""
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    groups = [ChannelGroup("a", "internal", ["0"], ["1"], ["3"], 16, "s"),
              ChannelGroup("b", "internal", ["3"], ["4"], ["6"], 16, "s")]
    return model, CostModel(model, SIZE, groups=groups), groups


def op_ms(kernel: int, c_in: int, c_out: int) -> float:
    """The fake timing of one op: bilinear in the widths, so interpolation between grid points is exact."""
    return 1e-3 * c_in * c_out * kernel * kernel + 0.01


def raw(a: int, b: int) -> float:
    """The tiny network's layer sum, by hand: conv 4->a (3x3), a->b (3x3), b->32 (1x1)."""
    return op_ms(3, 4, a) + op_ms(3, a, b) + op_ms(1, b, 32)


@pytest.fixture
def fake_timer(monkeypatch, cache_at):
    """Replace every timing with the formulas above; returns the list of what was timed."""
    cache_at()  # a latency cache of this test's own: the faked timings must never reach another test
    calls = []

    def time_op(signature, c_in, c_out, setting):
        calls.append(signature.key(c_in, c_out))
        return op_ms(signature.kernel[0], c_in, c_out)

    def measure_latency(model, size, *, batch_sizes, **kwargs):
        calls.append("network")
        return {f"batch{b}": NETWORK_MS for b in batch_sizes}

    monkeypatch.setattr(latency_table, "time_op", time_op)
    monkeypatch.setattr(latency, "measure_latency", measure_latency)
    return calls


def test_prediction_is_the_hand_sum_plus_the_calibration_constant(fake_timer):
    model, cost, _ = tiny()
    lc = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    offset = NETWORK_MS - raw(16, 16)
    for a, b in [(16, 16), (5, 7), (13, 3), (1, 1), (16, 9)]:  # on and between the grid points 1, 2, 4, 8, 12, 16
        assert lc.ms({"a": a, "b": b})["batch1"] == pytest.approx(raw(a, b) + offset, rel=1e-9)
        assert lc.fraction({"a": a, "b": b}) == pytest.approx((raw(a, b) + offset) / NETWORK_MS, rel=1e-9)


def test_a_network_faster_than_its_layers_scales_them_instead(fake_timer, monkeypatch):
    model, cost, _ = tiny()
    monkeypatch.setattr(latency, "measure_latency", lambda m, s, *, batch_sizes, **k: {"batch1": raw(16, 16) / 2})
    lc = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    # A constant would be negative and make the smallest widths cost less than nothing.
    assert lc.fraction({"a": 1, "b": 1}) == pytest.approx(raw(1, 1) / raw(16, 16), rel=1e-9)


def test_the_table_is_cached_per_setting_and_reused_without_timing(fake_timer, tmp_path):
    model, cost, _ = tiny()
    first = LatencyCost(model, CPU, batch_sizes=(1, 4), input_size=SIZE, cost=cost)
    # Per batch size: conv a->b on the 6 x 6 grid {1, 2, 4, 8, 12, 16}^2, conv b->32 at 6 widths, and the
    # first conv 4->a: the same signature (3x3, 8x4 input) as a->b at in = 4, so its 6 points are shared.
    # Plus one network. Nothing is timed twice.
    assert len(fake_timer) == 2 * (36 + 6 + 1) and first.timings == 86
    assert len(set(fake_timer)) == 36 + 6 + 1
    files = sorted((tmp_path / "cache" / "latency").glob("*.json"))
    assert len(files) == 2  # one per batch size
    stored = json.loads(files[0].read_text())
    assert stored["setting"]["device_name"] == latency_table.device_name(torch.device("cpu"))
    assert len(stored["ops"]) == 42 and len(stored["networks"]) == 1

    fake_timer.clear()
    second = LatencyCost(model, CPU, batch_sizes=(1, 4), input_size=SIZE, cost=cost)
    # No op is timed again; only the whole network, once per batch size: the check of the stored calibration.
    assert fake_timer == ["network", "network"] and second.timings == 0
    counts = {"a": 7, "b": 3}
    assert second.fraction(counts) == first.fraction(counts)

    # Another thread count is another setting: timed again, in its own file.
    fake_timer.clear()
    LatencyCost(model, CPU, batch_sizes=(1,), threads=torch.get_num_threads() + 1, input_size=SIZE, cost=cost)
    assert len(fake_timer) == 43
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 3


def test_a_damaged_cache_file_is_measured_again(fake_timer, tmp_path):
    model, cost, _ = tiny()
    LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    (path,) = (tmp_path / "cache" / "latency").glob("*.json")
    path.write_text("{not json")
    fake_timer.clear()
    LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    assert len(fake_timer) == 43 and json.loads(path.read_text())["ops"]


def test_every_field_of_the_setting_is_in_the_cache_key():
    base = LatencySetting("cpu", "AMD EPYC", "2.14", "bf16", "channels_last", 2, 32, (256, 128))
    changed = dict(device="cuda:0", device_name="Intel Xeon", torch_version="2.15", precision="fp32",
                   memory_format="contiguous", threads=1, batch_size=1, input_size=(128, 64))
    keys = {base.key()} | {dataclasses.replace(base, **{k: v}).key() for k, v in changed.items()}
    assert len(keys) == 1 + len(changed)
    assert base.key() == LatencySetting("cpu", "AMD EPYC", "2.14", "bf16", "channels_last", 2, 32, (256, 128)).key()


def test_grid_axes_and_monotone_tables():
    assert axis(64, True, round_to=8) == [8, 16, 32, 48, 64]
    # floor(12.5) = 12 -> 16 (nearest multiple, ties up), 25 -> 24, 50 -> 48, 75 -> 72, 100 stays (104 > 100).
    assert axis(100, True, round_to=8) == [8, 16, 24, 48, 72, 100]
    assert axis(16, True, min_channels=3) == [3, 4, 8, 12, 16]
    assert axis(7, False) == [7]
    assert monotone([[1.0, 3.0, 2.0], [2.0, 1.0, 4.0]]) == [[1.0, 3.0, 3.0], [2.0, 3.0, 4.0]]


def test_uniform_latency_budget_matches_brute_force(fake_timer):
    model, cost, groups = tiny()
    lc = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    offset = NETWORK_MS - raw(16, 16)

    def fraction(k: int) -> float:  # by hand: both groups keep k channels
        return (raw(k, k) + offset) / NETWORK_MS

    for target in (fraction(12) + 0.004, fraction(9) - 0.006, fraction(5) + 0.003):
        best = min(range(1, 17), key=lambda k: abs(fraction(k) - target))
        assert abs(fraction(best) - target) <= 0.02  # the uniform rate alone lands within tolerance here
        counts = keep_counts_for_budget(groups, cost, target_latency=target, latency=lc)
        assert counts == {"a": best, "b": best}


def test_global_latency_budget_matches_brute_force(fake_timer):
    model, cost, groups = tiny()
    lc = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    offset = NETWORK_MS - raw(16, 16)
    gen = torch.Generator().manual_seed(3)
    scores = {"a": torch.rand(16, generator=gen), "b": torch.rand(16, generator=gen) * 0.7}
    # Brute force: every channel but each group's last one, lowest score first; cut the first n.
    offers = sorted((float(s), position, name) for position, name in enumerate(("a", "b"))
                    for s in sorted(scores[name].tolist())[:15])

    def counts(n: int) -> dict[str, int]:
        cut = [name for _, _, name in offers[:n]]
        return {"a": 16 - cut.count("a"), "b": 16 - cut.count("b")}

    def fraction(c: dict[str, int]) -> float:
        return (raw(c["a"], c["b"]) + offset) / NETWORK_MS

    for target in (0.85, 0.7):
        first = next(n for n in range(len(offers) + 1) if fraction(counts(n)) <= target)
        expected = min((counts(first - 1), counts(first)), key=lambda c: abs(fraction(c) - target))
        assert abs(fraction(expected) - target) <= 0.02
        got = global_keep_counts(groups, Target(latency=target), cost, scores, latency=lc)
        assert got == expected


def test_an_unreachable_latency_budget_names_the_smallest_fraction(fake_timer):
    model, cost, groups = tiny()
    lc = LatencyCost(model, CPU, batch_sizes=(1,), input_size=SIZE, cost=cost)
    lowest = (raw(1, 1) + NETWORK_MS - raw(16, 16)) / NETWORK_MS
    with pytest.raises(ValueError, match=f"latency budget of 0.1 cannot be met.*keeps {lowest:.3g} of its latency"):
        budget_problem(groups, cost, target_latency=0.1, latency=lc)
    with pytest.raises(ValueError, match="needs the model's predicted latency"):
        budget_problem(groups, cost, target_latency=0.5)
    with pytest.raises(ValueError, match="exactly one of target_macs, target_params and target_latency"):
        budget_problem(groups, cost, target_latency=0.5, target_macs=0.5, latency=lc)


def test_feedback_corrects_a_known_prediction_error():
    # The table predicts the aim exactly; the machine runs every plan 25% slower than predicted.
    steps_seen = []

    def plan(aim):
        steps_seen.append(aim)
        return {"aim": aim}

    counts, steps = plan_to_measured(plan, lambda c: c["aim"], lambda c: 1.25 * c["aim"], 0.5, rounds=3, lowest=0.1)
    assert steps == [Step(0.5, 0.5, 0.625), Step(0.4, 0.4, 0.5)]  # 0.5 x 0.5 / 0.625 = 0.4, then measured = target
    assert counts == {"aim": 0.4}


def test_feedback_interpolates_between_plans_on_either_side_of_the_target():
    # measured = 0.2 + 0.8 predicted^2: a ratio correction alone would zigzag.
    counts, steps = plan_to_measured(lambda aim: {"aim": aim}, lambda c: c["aim"], lambda c: 0.2 + 0.8 * c["aim"] ** 2,
                                     0.5, rounds=6, lowest=0.1, tolerance=0.001)
    # 0.5 -> 0.4 (below): ratio, 0.5 x 0.5 / 0.4 = 0.625 -> 0.5125 (above); then the line through both:
    # 0.5 + 0.1 x 0.125 / 0.1125 = 0.6111 -> 0.49877; through (0.6111, 0.49877), (0.625, 0.5125): 0.61236 -> 0.49999.
    assert [s.aim for s in steps] == pytest.approx([0.5, 0.625, 0.611111, 0.612360], abs=1e-6)
    assert counts["aim"] == pytest.approx(0.612360, abs=1e-6)


def test_feedback_stops_at_the_lowest_reachable_aim_and_keeps_the_closest_plan():
    counts, steps = plan_to_measured(lambda aim: {"aim": aim}, lambda c: c["aim"], lambda c: c["aim"] + 0.3, 0.4,
                                     rounds=5, lowest=0.2)
    # 0.4 -> measured 0.7 -> aim 0.4 x 0.4 / 0.7 = 0.229 -> measured 0.529 -> aim 0.173, held at 0.2 -> 0.5 -> stop.
    assert [round(s.aim, 3) for s in steps] == [0.4, 0.229, 0.2]
    assert counts == {"aim": 0.2}


def test_pruner_plans_a_latency_target_with_feedback(fake_timer, monkeypatch):
    seen = []

    def measured(model, widths, compute, **kwargs):  # this machine runs every plan at 1.2 x the prediction
        fraction = pruner.latency.cost.fraction(pruner_counts(widths))
        seen.append(fraction)
        return 1.2 * fraction

    def pruner_counts(widths):
        return {g.name: widths[g.producers[0]][0] for g in pruner.session.groups}

    monkeypatch.setattr(latency_feedback, "measured_fraction", measured)
    pruner = get_pruner("haoli", target_latency=0.6, input_size=(32, 16), latency_batch_sizes=(1,), compute=CPU)
    assert pruner.scope == "all"  # auto: a budget prunes the residual streams too
    model = build_model("resnet18").eval()
    pruner.prune(model)
    summary = pruner.summary()["latency_budget"]
    assert summary["feedback"][0]["aim"] == 0.6 and len(seen) == len(summary["feedback"])
    # After the correction the plan is predicted at 0.6 / 1.2 = 0.5 (within the allocation's 2%).
    assert summary["aim"] == pytest.approx(0.5)
    assert abs(summary["predicted"] - 0.5) <= 0.02
    with pytest.raises(ValueError, match="latency_batch_sizes"):
        get_pruner("haoli", target_latency=0.5, latency_batch_sizes=())


def test_auto_scope_is_all_for_budgets_and_internal_for_rates():
    assert resolve_scope("auto", budget=True, scopes=("internal", "all")) == "all"
    assert resolve_scope("auto", budget=False, scopes=("internal", "all")) == "internal"
    assert resolve_scope("auto", budget=True, scopes=("internal",)) == "internal"
    assert resolve_scope("internal", budget=True, scopes=("internal", "all")) == "internal"
    assert get_pruner("fpgm", target_macs=0.5).scope == "all"
    assert get_pruner("fpgm", rate=0.3).scope == "internal"
    assert get_pruner("entropy", target_macs=0.5).scope == "internal"  # entropy supports internal only
    with pytest.raises(ValueError, match="target_latency"):
        Target(rate=0.3, latency=0.5)
