"""The Pruner interface, allocations, and the one-shot weight methods (HaoLi, FPGM, random) on constructed weights."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import reid_prune
from reid_prune import build_model
from reid_prune.config import ConfigError
from reid_prune.evaluation import complexity
from reid_prune.pruners import Target, available, get_method, get_pruner
from reid_prune.pruners.allocation import global_keep_counts
from reid_prune.pruners.criteria import comparable
from reid_prune.pruners.criteria.taylor import Taylor
from reid_prune.pruners.groups import ChannelGroup, find_channel_groups
from reid_prune.pruners.schedules.iterative import lowest_channels

METHODS_DIR = Path(reid_prune.__file__).parent / "pruners" / "methods"


def _model(arch="resnet18"):
    torch.manual_seed(0)
    return build_model(arch).eval()


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of ``original`` survive in ``pruned`` (rows are unique)."""
    flat_o, flat_p = original.flatten(1), pruned.flatten(1)
    return [int(torch.nonzero((flat_o == row).all(dim=1))[0]) for row in flat_p]


def _group(name, channels):
    return ChannelGroup(name=name, kind="internal", producers=[name], norms=[], consumers=[], channels=channels,
                        stage="layer1")


# ------------------------------------------------------------------------- registry and options


def test_registry_names_and_errors():
    assert set(available()) == {"haoli", "fpgm", "psfp", "molchanov", "entropy", "autobalanced", "thinet",
                                "channel_pruning", "afp_prc", "l2", "random"}
    with pytest.raises(ValueError, match="unknown pruning method 'fpg'; did you mean 'fpgm'"):
        get_pruner("fpg", rate=0.5)
    with pytest.raises(ValueError, match="exactly one target: rate, layer_rates, target_macs.*--target-macs"):
        get_pruner("haoli", rate=0.5, target_macs=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        get_pruner("haoli", rate=1.0)
    with pytest.raises(ConfigError, match="prune.options.speed is not a valid key.*prune.options.mode"):
        get_pruner("fpgm", rate=0.5, speed=2)
    with pytest.raises(ConfigError, match="prune.options.mode: expected one of hard, soft, got 'medium'"):
        get_pruner("fpgm", rate=0.5, mode="medium")
    with pytest.raises(ConfigError, match="prune.options.bins: must be >= 2, got 1"):
        get_pruner("entropy", rate=0.5, bins=1)
    with pytest.raises(ValueError, match="scope internal or all, not 'everything'"):
        get_pruner("haoli", rate=0.5, scope="everything")
    with pytest.raises(ValueError, match="allocation: expected one of uniform, global, layer_rates"):
        get_pruner("haoli", rate=0.5, allocation="greedy")
    with pytest.raises(ValueError, match="cannot be ranked across groups"):
        get_pruner("thinet", rate=0.5, allocation="global")
    with pytest.raises(ValueError, match=r"\(layer_rates\) set every group's width themselves: drop allocation"):
        get_pruner("haoli", layer_rates={"layer1.0.conv1": 0.5}, allocation="global")
    with pytest.raises(ValueError, match="allocation 'layer_rates' takes its rates from a file: .*--layer-rates"):
        get_pruner("haoli", target_macs=0.5, allocation="layer_rates")
    with pytest.raises(ValueError, match=r"unknown groups \['stream.layer2'\] .*--scope all"):
        get_pruner("haoli", layer_rates={"stream.layer2": 0.5}, scope="internal").check(_model())


def test_config_checks_method_options_on_load():
    from reid_prune.config import load_config

    with pytest.raises(ConfigError, match="config key prune.options.curve: expected one of paper, lab, got 'fast'"):
        load_config(None, ["prune.method=psfp", "prune.options.curve=fast"])
    with pytest.raises(ConfigError, match="config key prune.options.rounds: expected an integer, got 'fast'"):
        load_config(None, ["prune.method=autobalanced", "prune.options.rounds=fast"])
    with pytest.raises(ConfigError, match="config key prune.method: unknown pruning method 'molch'"):
        load_config(None, ["prune.method=molch"])
    cfg = load_config(None, ["prune.method=molchanov", "prune.options.variant=2019", "prune.allocation=uniform"])
    assert cfg.prune.options == {"variant": 2019} and cfg.prune.allocation == "uniform"


def test_declarations_and_default_allocations():
    requires = {name: get_pruner(name, rate=0.1, scope=get_method(name).scopes[0]).requires for name in available()}
    assert requires == {"haoli": "weights", "fpgm": "weights", "random": "weights", "molchanov": "data",
                        "entropy": "data", "thinet": "data", "channel_pruning": "data", "psfp": "training",
                        "l2": "training", "autobalanced": "training", "afp_prc": "training"}
    assert get_pruner("fpgm", rate=0.1, mode="soft").requires == "training"
    assert get_pruner("molchanov", rate=0.1).allocation.kind == "global"  # the paper's global ranking
    assert get_pruner("haoli", rate=0.1).allocation.kind == "uniform"
    assert get_pruner("haoli", layer_rates={"a": 0.1}).allocation.kind == "layer_rates"


def test_every_method_is_one_short_file():
    files = sorted(p for p in METHODS_DIR.glob("*.py") if p.name != "__init__.py")
    assert {p.stem for p in files} == set(available())  # each file registers exactly its own name
    long = {p.name: n for p in files if (n := len(p.read_text().splitlines())) > 60}
    assert not long, long


# ------------------------------------------------------------------------- HaoLi


def test_haoli_removes_smallest_l1_filters():
    model = _model()
    conv = model.layer1[0].conv1
    with torch.no_grad():
        scale = torch.randperm(conv.out_channels).float() + 1.0  # filter j has L1 norm ~ scale[j]
        conv.weight.copy_(torch.rand_like(conv.weight) * scale[:, None, None, None] / conv.weight[0].numel())
    original = conv.weight.detach().clone()
    l1 = original.abs().flatten(1).sum(1)
    pruned = get_pruner("haoli", rate=0.25).prune(model)
    kept = _kept_rows(original, pruned.layer1[0].conv1.weight)
    assert kept == sorted(torch.argsort(l1, descending=True)[:48].tolist())  # floor(64 x 0.75) = 48
    assert pruned.layer1[0].bn1.num_features == 48 and pruned.layer1[0].conv2.in_channels == 48


def _bottleneck_case():
    """ResNet-50 layer1.0: conv1 filters with L1 rising with the index; conv2 filters built so that
    independent and greedy scoring (Li et al. Sec. 3.3) keep different halves."""
    model = _model("resnet50")
    block = model.layer1[0]
    with torch.no_grad():
        block.conv1.weight.copy_((torch.arange(64).float() + 1)[:, None, None, None] / 100)  # keeps 32..63
        weight = torch.full_like(block.conv2.weight, 0.01)  # filters 0..31: 0.01 on every input
        weight[32:, :32] = 0.1  # filters 32..63: large on the inputs conv1's cut removes ...
        weight[32:, 32:] = 0.001  # ... and small on the inputs that stay
        block.conv2.weight.copy_(weight * (1 + torch.arange(64.0) / 1000)[:, None, None, None])  # unique rows
    return model, {"layer1.0.conv1": 0.5, "layer1.0.conv2": 0.5}


def test_haoli_greedy_ignores_kernels_on_removed_maps():
    # By hand (times 1 + j/1000 <= 1.064): independent L1 of conv2 filter j: 0.01 x 64 x 9 = 5.76 (j < 32) or
    # (0.1 + 0.001) x 32 x 9 = 29.1; greedy (inputs 32..63 only): 0.01 x 32 x 9 = 2.88 (j < 32) or 0.001 x 32 x 9 = 0.288.
    model, rates = _bottleneck_case()
    independent = get_pruner("haoli", layer_rates=rates).prune(copy.deepcopy(model))
    greedy = get_pruner("haoli", layer_rates=rates, greedy=True).prune(model)
    original = _bottleneck_case()[0].layer1[0].conv2.weight.detach()
    conv1 = _bottleneck_case()[0].layer1[0].conv1.weight.detach()
    assert _kept_rows(conv1, greedy.layer1[0].conv1.weight) == list(range(32, 64))
    assert _kept_rows(original[:, 32:], independent.layer1[0].conv2.weight) == list(range(32, 64))
    assert _kept_rows(original[:, 32:], greedy.layer1[0].conv2.weight) == list(range(32))


def test_haoli_projection_shortcut_decides_the_stream():
    model = _model()
    with torch.no_grad():
        channel = torch.arange(128).float()
        model.layer2[0].downsample[0].weight.copy_((channel + 1)[:, None, None, None] / 1000)  # prefers 64..127
        for conv in (model.layer2[0].conv2, model.layer2[1].conv2):  # the convs prefer 0..63, and dominate
            conv.weight.copy_((128 - channel)[:, None, None, None].expand_as(conv.weight) / 10)
    scores_side_by_side = sum(m.weight.detach().abs().flatten(1).sum(1) for m in (
        model.layer2[0].conv2, model.layer2[0].downsample[0], model.layer2[1].conv2))
    assert set(torch.argsort(scores_side_by_side, descending=True)[:64].tolist()) == set(range(64))
    original = model.layer2[0].downsample[0].weight.detach().clone()
    pruned = get_pruner("haoli", layer_rates={"stream.layer2": 0.5}, scope="all").prune(model)
    assert _kept_rows(original, pruned.layer2[0].downsample[0].weight) == list(range(64, 128))


# ------------------------------------------------------------------------- FPGM and random


def _fpgm_brute_force(weight: torch.Tensor) -> np.ndarray:
    w = weight.detach().double().flatten(1).numpy()
    return np.array([sum(np.linalg.norm(w[j] - w[k]) for k in range(len(w))) for j in range(len(w))])


def test_fpgm_removes_filters_nearest_the_geometric_median():
    model = _model()
    conv = model.layer1[0].conv1
    with torch.no_grad():
        centre = torch.full_like(conv.weight[0], 0.5)  # a large-norm centre the cloud surrounds
        conv.weight.copy_(centre + 0.1 * torch.randn_like(conv.weight))
        conv.weight[7] = centre  # the geometric median itself: largest-norm-ish, but most replaceable
    original = conv.weight.detach().clone()
    scores = _fpgm_brute_force(original)
    by_norm = get_pruner("haoli", rate=0.25).prune(copy.deepcopy(model))
    pruned = get_pruner("fpgm", rate=0.25).prune(model)
    kept = _kept_rows(original, pruned.layer1[0].conv1.weight)
    assert kept == sorted(np.argsort(-scores, kind="stable")[:48].tolist())
    assert 7 not in kept
    assert 7 in _kept_rows(original, by_norm.layer1[0].conv1.weight)  # a norm criterion keeps it


def test_random_control_is_seeded_and_meets_the_budget():
    model = _model()
    full = complexity(model, (128, 64))["macs"]
    # Scope internal: layer1's stream keeps its width, so conv1's rows can be matched whole.
    a, b, c = (reid_prune.prune(model, "random", target_macs=0.6, input_size=(128, 64), seed=seed, scope="internal")
               for seed in (1, 1, 2))
    assert abs(complexity(a, (128, 64))["macs"] / full - 0.6) <= 0.02
    conv = model.layer1[0].conv1.weight.detach()
    assert _kept_rows(conv, a.layer1[0].conv1.weight) == _kept_rows(conv, b.layer1[0].conv1.weight)
    assert _kept_rows(conv, a.layer1[0].conv1.weight) != _kept_rows(conv, c.layer1[0].conv1.weight)
    assert a.layer1[0].conv1.out_channels == c.layer1[0].conv1.out_channels  # same budget, other channels


# ------------------------------------------------------------------------- allocations


def test_molchanov_global_ranking_hand_case():
    # Molchanov 2017: scores normalised per layer by their L2 norm, then ranked together.
    # A = (1,1,1,1) / 2 = 0.5 each; B = (100,10,5,1) / 100.63 = (0.994, 0.0994, 0.0497, 0.00994).
    groups = [_group("A", 4), _group("B", 4)]
    raw = {"A": torch.tensor([1.0, 1, 1, 1]), "B": torch.tensor([100.0, 10, 5, 1])}
    ranked = comparable(Taylor(2017), raw)
    counts = global_keep_counts(groups, Target(rate=0.25), None, ranked)  # floor(8 x 0.75) = 6 kept: remove 2
    assert counts == {"A": 4, "B": 2}
    removal = lowest_channels(ranked, {"A": 0, "B": 2})  # the iterative schedule's removal order
    assert removal == [("B", 3), ("B", 2)]
    # Without normalisation (variant 2019) the raw scores tie at 1: equal scores go in group order, so A loses two.
    assert global_keep_counts(groups, Target(rate=0.25), None, comparable(Taylor(2019), raw)) == {"A": 2, "B": 4}


def test_global_allocation_meets_the_budget_with_uneven_widths():
    size = (128, 64)
    full = complexity(build_model("resnet18"), size)["macs"]
    fractions = {}
    for allocation in ("global", "uniform"):
        model = _model()
        before = {g.name: g.channels for g in find_channel_groups(model)}
        small = reid_prune.prune(model, "haoli", target_macs=0.5, allocation=allocation, input_size=size)
        assert abs(complexity(small, size)["macs"] / full - 0.5) <= 0.02
        after = {g.name: g.channels for g in find_channel_groups(small)}
        fractions[allocation] = [after[k] / before[k] for k in before]
    # Uniform: one rate, so kept fractions differ only by rounding (one channel of the narrowest group).
    assert max(fractions["uniform"]) - min(fractions["uniform"]) <= 1 / 64
    # Global: each group keeps what the ranking leaves it (measured 0.42 .. 0.49 on this random init).
    assert max(fractions["global"]) - min(fractions["global"]) >= 0.05


def test_global_allocation_respects_min_channels_and_round_to():
    model = _model()
    small = reid_prune.prune(model, "haoli", target_macs=0.5, allocation="global", input_size=(128, 64),
                             round_to=8, min_channels=16)
    widths = [g.channels for g in find_channel_groups(small)]
    assert all(w % 8 == 0 and w >= 16 for w in widths), widths


# ------------------------------------------------------------------------- one call


def test_training_methods_explain_how_to_run():
    for method in ("psfp", "l2", "autobalanced"):
        with pytest.raises(ValueError, match="prunes during training.*--finetune-epochs"):
            reid_prune.prune(_model(), method, rate=0.3)
    with pytest.raises(ValueError, match="'molchanov' scores channels on data: pass data="):
        reid_prune.prune(_model(), "molchanov", rate=0.3, input_size=(64, 32))


def test_one_call_prune_meets_a_mac_budget_leaves_the_input_alone_and_guards():
    model = _model("resnet50")
    state = copy.deepcopy(model.state_dict())
    full = complexity(model, (256, 128))["macs"]
    small = reid_prune.prune(model, "haoli", target_macs=0.5, input_size=(256, 128), round_to=8)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # the input is not pruned
    ratio = complexity(small, (256, 128))["macs"] / full
    assert abs(ratio - 0.5) <= 0.02, ratio
    convs = [m for name, m in small.named_modules() if name.endswith(("conv1", "conv2")) and "layer" in name]
    assert all(c.out_channels % 8 == 0 and c.out_channels >= 8 for c in convs)
    inplace = reid_prune.prune(model, "haoli", rate=0.5, inplace=True)
    assert inplace is model and model.layer1[0].conv1.out_channels == 32
    # ResNet-18 internal groups at 64 channels or more still keep 0.37 of the MACs.
    with pytest.raises(ValueError, match="budget of 0.3 cannot be met.*keeps 0.369.*scope=all"):
        reid_prune.prune(_model(), "haoli", target_macs=0.3, min_channels=64, input_size=(128, 64), scope="internal")


def test_one_call_prune_returns_a_copy_and_leaves_the_input_whole():
    """Issue 11: reid_prune.prune cut its input in place, while `small = prune(model, ...)` reads as a copy."""
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = reid_prune.prune(model, "haoli", rate=0.5, input_size=(64, 32))
    assert small is not model and small.training and model.training
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert complexity(small, (64, 32))["params"] < complexity(model, (64, 32))["params"]
