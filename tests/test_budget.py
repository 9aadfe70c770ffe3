"""Keep counts from rates and budgets, and the analytic cost model against real pruned networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reid_prune import build_model
from reid_prune.pruners.budget import keep_counts_for_budget, keep_counts_for_rate, kept
from reid_prune.pruners.cost import CostModel
from reid_prune.pruners.groups import ChannelGroup, find_channel_groups
from reid_prune.pruners.surgery import apply_plan


def _group(name: str, channels: int) -> ChannelGroup:
    return ChannelGroup(name, "internal", [name], [], [], channels, "layer1")


def _macs(model: nn.Module, size: tuple[int, int]) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() // 2


@pytest.fixture(scope="module")
def resnet50_cost():
    torch.manual_seed(0)
    model = build_model("resnet50", last_stride=2)
    return model, CostModel(model, (256, 128))


def test_rate_keeps_the_floor_of_the_kept_share():
    groups = [_group("a", 64), _group("b", 100), _group("c", 3)]
    # floor(64 x 0.7) = floor(44.8) = 44, ThiNet's int(C * compression_rate); floor(70.0) = 70; floor(2.1) = 2.
    assert keep_counts_for_rate(groups, 0.3) == {"a": 44, "b": 70, "c": 2}
    assert keep_counts_for_rate(groups, 0.0) == {"a": 64, "b": 100, "c": 3}
    # Never zero: floor(0.64) = 0 -> 1; floor(100 x 0.01) = 1 exactly, despite 1 - 0.99 < 0.01 in floats.
    assert keep_counts_for_rate(groups, 0.99) == {"a": 1, "b": 1, "c": 1}
    assert kept(10, 0.9) == 1 and kept(10, 0.7) == 3 and kept(64, 0.3) == 44
    assert keep_counts_for_rate(groups, 0.99, min_channels=4) == {"a": 4, "b": 4, "c": 3}


def test_round_to_goes_to_the_nearest_multiple_within_bounds():
    groups = [_group("a", 64), _group("b", 100), _group("c", 6), _group("d", 104)]
    # a: 44 -> 48 (5.5 x 8, ties round up); b: 70 -> 72; c: 4 -> the lower bound 8 is above its 6 channels -> 6;
    # d: floor(72.8) = 72.
    assert keep_counts_for_rate(groups, 0.3, round_to=8) == {"a": 48, "b": 72, "c": 6, "d": 72}
    # b: 50 -> 48; d: 52 = 6.5 x 8 -> 56 (ties round up).
    assert keep_counts_for_rate(groups, 0.5, round_to=8) == {"a": 32, "b": 48, "c": 6, "d": 56}
    # b at rate 0: 100 would round to 104, more than it has -> 100.
    assert keep_counts_for_rate(groups, 0.0, round_to=8)["b"] == 100
    # The floor is min_channels rounded up to a multiple: 1 -> 8, 9 -> 16.
    assert keep_counts_for_rate(groups, 0.99, round_to=8) == {"a": 8, "b": 8, "c": 6, "d": 8}
    assert keep_counts_for_rate(groups, 0.99, round_to=8, min_channels=9)["a"] == 16


def test_round_to_8_on_resnet50_gives_multiples_of_8():
    groups = find_channel_groups(build_model("resnet50"), scope="all")
    for rate in (0.1, 0.37, 0.9):
        counts = keep_counts_for_rate(groups, rate, round_to=8)
        assert list(counts) == [g.name for g in groups]  # a count for every group, in the groups' order
        assert all(k % 8 == 0 and 8 <= k <= g.channels for g, k in zip(groups, counts.values(), strict=True))


def test_per_group_rates_default_to_zero():
    groups = [_group("a", 64), _group("b", 32)]
    assert keep_counts_for_rate(groups, {"b": 0.5}) == {"a": 64, "b": 16}
    with pytest.raises(ValueError, match=r"unknown groups \['z'\]"):
        keep_counts_for_rate(groups, {"z": 0.5})


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, "0.5", True, float("nan")])
def test_invalid_rates_are_refused(rate):
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        keep_counts_for_rate([_group("a", 8)], rate)
    with pytest.raises(ValueError, match="rate of group 'a'"):
        keep_counts_for_rate([_group("a", 8)], {"a": rate})


def test_invalid_rounding_is_refused():
    with pytest.raises(ValueError, match="min_channels"):
        keep_counts_for_rate([_group("a", 8)], 0.5, min_channels=0)
    with pytest.raises(ValueError, match="round_to"):
        keep_counts_for_rate([_group("a", 8)], 0.5, round_to=0)


def test_cost_model_matches_pytorch_on_the_full_resnet50(resnet50_cost):
    model, cost = resnet50_cost
    assert cost.macs() == _macs(model, (256, 128))
    assert round(cost.macs() / 1e9, 2) == 2.67  # the documented ResNet-50 figure at 256x128, last stride 2
    assert cost.params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, kwargs", [
    ("resnet18", dict(num_classes=9)),
    ("resnet50", dict(embedding_dim=40, num_classes=9, pooling="gem")),
])
def test_cost_model_agrees_exactly_with_the_pruned_model(arch, kwargs):
    size = (64, 32)
    model = build_model(arch, **kwargs)
    cost = CostModel(model, size)
    groups = find_channel_groups(model, scope="all", include_last_stage=True)
    gen = torch.Generator().manual_seed(3)
    counts = {g.name: int(torch.randint(1, g.channels + 1, (1,), generator=gen)) for g in groups}
    plan = {g.name: torch.randperm(g.channels, generator=gen)[: counts[g.name]] for g in groups}
    predicted_macs, predicted_params = cost.macs(counts), cost.params(counts)
    apply_plan(model, groups, plan)
    assert predicted_macs == _macs(model, size)
    assert predicted_params == sum(p.numel() for p in model.parameters())
    assert CostModel(model, size).macs() == predicted_macs


def test_cost_model_leaves_the_model_alone_and_checks_counts():
    model = build_model("resnet18").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cost = CostModel(model, (64, 32))
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="unknown groups"):
        cost.macs({"layer9.conv": 3})
    with pytest.raises(ValueError, match=r"keeps 0 channels; expected 1..64"):
        cost.params({"layer1.0.conv1": 0})


@pytest.mark.parametrize("target", ["target_macs", "target_params"])
def test_budget_lands_within_two_percent(resnet50_cost, target):
    model, cost = resnet50_cost
    groups = find_channel_groups(model, scope="internal")
    counts = keep_counts_for_budget(groups, cost, **{target: 0.5})
    measure = cost.macs if target == "target_macs" else cost.params
    assert abs(measure(counts) / measure() - 0.5) <= 0.02
    assert set(counts) == {g.name for g in groups}
    assert all(1 <= counts[g.name] < g.channels for g in groups)


def test_budget_with_coarse_rounding_adjusts_single_groups(resnet50_cost):
    model, cost = resnet50_cost
    groups = find_channel_groups(model, scope="internal")
    # No uniform rate lands within 2% here: the nearest gives 0.52 of the MACs.
    uniform = [keep_counts_for_rate(groups, r / 100, round_to=64) for r in range(100)]
    assert min(abs(cost.macs(c) / cost.macs() - 0.5) for c in uniform) > 0.02
    counts = keep_counts_for_budget(groups, cost, target_macs=0.5, round_to=64)
    assert abs(cost.macs(counts) / cost.macs() - 0.5) <= 0.02
    assert all(k % 64 == 0 for k in counts.values())
    tight = keep_counts_for_budget(groups, cost, target_macs=0.5, round_to=8, tolerance=0.001)
    assert abs(cost.macs(tight) / cost.macs() - 0.5) <= 0.001


def test_unreachable_budget_names_the_smallest_fraction(resnet50_cost):
    model, cost = resnet50_cost
    groups = find_channel_groups(model, scope="internal")
    smallest = cost.macs({g.name: 1 for g in groups}) / cost.macs()
    with pytest.raises(ValueError, match=rf"keeps {smallest:.3g} of its MACs.*scope=all"):
        keep_counts_for_budget(groups, cost, target_macs=0.05)


def test_budget_arguments_are_checked(resnet50_cost):
    model, cost = resnet50_cost
    groups = find_channel_groups(model, scope="internal")
    with pytest.raises(ValueError, match="exactly one"):
        keep_counts_for_budget(groups, cost)
    with pytest.raises(ValueError, match="exactly one"):
        keep_counts_for_budget(groups, cost, target_macs=0.5, target_params=0.5)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"in \(0, 1\]"):
            keep_counts_for_budget(groups, cost, target_params=bad)
    with pytest.raises(ValueError, match="does not know groups"):
        keep_counts_for_budget([_group("elsewhere", 8)], cost, target_macs=0.5)
    full = keep_counts_for_budget(groups, cost, target_macs=1.0)
    assert full == {g.name: g.channels for g in groups}


def test_a_tiny_budget_is_met_closely_or_refused(resnet50_cost):
    model, cost = resnet50_cost
    groups = find_channel_groups(model, scope="all")
    # Every group at one channel keeps about 0.0003 of the MACs: 0.0001 cannot be met, whatever 2 points allow.
    with pytest.raises(ValueError, match=r"budget of 0\.0001 cannot be met"):
        keep_counts_for_budget(groups, cost, target_macs=0.0001)
    counts = keep_counts_for_budget(groups, cost, target_macs=0.05)
    assert abs(cost.macs(counts) / cost.macs() - 0.05) <= 0.005  # a tenth of the target, not 0.02
