"""Pruner interface and the weight-based methods (HaoLi, FPGM, PSFP) on constructed weights."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import reid_prune
from reid_prune import build_model
from reid_prune.evaluation import complexity
from reid_prune.pruners import PLANNED, available, get_pruner


def _model(arch="resnet18"):
    torch.manual_seed(0)
    return build_model(arch).eval()


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of ``original`` survive in ``pruned`` (rows are unique random filters)."""
    flat_o, flat_p = original.flatten(1), pruned.flatten(1)
    return [int(torch.nonzero((flat_o == row).all(dim=1))[0]) for row in flat_p]


def test_registry_names_and_errors():
    assert {"haoli", "fpgm", "psfp"} <= set(available())
    assert set(available()) <= set(PLANNED)
    with pytest.raises(ValueError, match="unknown pruning method 'l1'.*haoli"):
        get_pruner("l1", rate=0.5)
    for name in set(PLANNED) - set(available()):
        with pytest.raises(NotImplementedError, match="not implemented yet"):
            get_pruner(name, rate=0.5)
    with pytest.raises(ValueError, match="exactly one of"):
        get_pruner("haoli", rate=0.5, target_macs=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        get_pruner("haoli", rate=1.0)
    with pytest.raises(ValueError, match="has no option 'speed'.*mode"):
        get_pruner("fpgm", rate=0.5, speed=2)
    with pytest.raises(ValueError, match="mode"):
        get_pruner("fpgm", rate=0.5, mode="medium")
    with pytest.raises(ValueError, match="scope internal or all"):
        get_pruner("haoli", rate=0.5, scope="everything")


def test_declarations():
    assert get_pruner("haoli", rate=0.1).requires == "weights"
    assert get_pruner("fpgm", rate=0.1).requires == "weights"
    assert get_pruner("fpgm", rate=0.1, mode="soft").requires == "training"
    assert get_pruner("psfp", rate=0.1).requires == "training"


def test_haoli_removes_smallest_l1_filters():
    model = _model()
    conv = model.layer1[0].conv1
    with torch.no_grad():
        scale = torch.randperm(conv.out_channels).float() + 1.0  # filter j has L1 norm ~ scale[j]
        conv.weight.copy_(torch.rand_like(conv.weight) * scale[:, None, None, None] / conv.weight[0].numel())
    original = conv.weight.detach().clone()
    l1 = original.abs().flatten(1).sum(1)
    pruner = get_pruner("haoli", rate=0.25)
    pruned = pruner.prune(model)
    kept = _kept_rows(original, pruned.layer1[0].conv1.weight)
    expected = sorted(torch.argsort(l1, descending=True)[:48].tolist())
    assert kept == expected
    assert pruned.layer1[0].bn1.num_features == 48 and pruned.layer1[0].conv2.in_channels == 48


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


def _fake_trainer(model, epochs):
    return SimpleNamespace(model=model, train_cfg=SimpleNamespace(epochs=epochs))


def test_psfp_schedule_follows_the_reference_curve():
    pruner = get_pruner("psfp", rate=0.4)
    total = 16
    fractions = [pruner.rate_fraction_at(e, total) for e in range(total)]
    assert fractions[total // 8 - 1] == pytest.approx(0.25, abs=0.01)  # P/4 after 1/8 of training
    assert fractions[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(fractions, fractions[1:]))


def test_psfp_zeroes_smallest_l2_then_removes_them():
    model = _model()
    trainer = _fake_trainer(model, epochs=4)
    pruner = get_pruner("psfp", rate=0.5)
    pruner.on_train_start(trainer)
    group = next(g for g in pruner.groups if g.name == "layer2.0.conv1")
    conv = model.get_submodule("layer2.0.conv1")
    for epoch in range(4):
        pruner.on_epoch_end(trainer, epoch)
        zeroed = pruner.masks[group.name]
        expected_count = round(pruner.rate_fraction_at(epoch, 4) * (group.channels - pruner.keep_counts[group.name]))
        assert len(zeroed) == expected_count
        assert torch.all(conv.weight[zeroed] == 0)
        bn = model.get_submodule(group.norms[0])
        assert torch.all(bn.weight[zeroed] == 0) and torch.all(bn.bias[zeroed] == 0)
    norms_before = conv.weight.detach().flatten(1).norm(dim=1)
    kept_expected = sorted(set(range(group.channels)) - set(pruner.masks[group.name]))
    assert sorted(torch.argsort(norms_before, descending=True, stable=True)[: len(kept_expected)].tolist()) == kept_expected
    x = torch.randn(2, 3, 64, 32)
    zeroed_out = model(x)
    pruned = pruner.finalize(model)
    assert pruned.get_submodule("layer2.0.conv1").out_channels == len(kept_expected)
    torch.testing.assert_close(pruned(x), zeroed_out, atol=1e-5, rtol=1e-5)


def test_training_methods_explain_how_to_run():
    with pytest.raises(ValueError, match="prunes during training.*--finetune-epochs"):
        reid_prune.prune(_model(), "psfp", rate=0.3)


def test_one_call_prune_meets_a_mac_budget_and_guards():
    model = _model("resnet50")
    full = complexity(model, (256, 128))["macs"]
    small = reid_prune.prune(model, "haoli", target_macs=0.5, input_size=(256, 128), round_to=8)
    ratio = complexity(small, (256, 128))["macs"] / full
    assert abs(ratio - 0.5) <= 0.02, ratio
    convs = [m for name, m in small.named_modules() if name.endswith(("conv1", "conv2")) and "layer" in name]
    assert all(c.out_channels % 8 == 0 and c.out_channels >= 8 for c in convs)
    # ResNet-18 internal groups at 64 channels or more still keep 0.37 of the MACs.
    with pytest.raises(ValueError, match="budget of 0.300 cannot be met.*keeps 0.369.*scope=all"):
        reid_prune.prune(_model(), "haoli", target_macs=0.3, min_channels=64, input_size=(128, 64))


def test_one_call_prune_returns_a_copy_and_leaves_the_input_whole():
    """Issue 11: reid_prune.prune cut its input in place, while `small = prune(model, ...)` reads as a copy."""
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = reid_prune.prune(model, "haoli", rate=0.5, input_size=(64, 32))
    assert small is not model and small.training and model.training
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert complexity(small, (64, 32))["params"] < complexity(model, (64, 32))["params"]
