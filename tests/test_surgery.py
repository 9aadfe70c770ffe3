"""Physical channel removal: equivalence with zeroed channels, validation, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from reid_prune import build_model, load_model, save_checkpoint
from reid_prune.checkpoint import module_widths
from reid_prune.pruners.groups import find_channel_groups
from reid_prune.pruners.surgery import apply_plan, prune_group, zero_group

SIZE = (64, 32)


def _randomize_norms(model: nn.Module) -> None:
    """Random running statistics and affine parameters, so no BN is the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                if m.bias.requires_grad:  # the BNNeck's bias stays frozen at zero
                    m.bias.normal_(0.0, 0.1)


def _macs(model: nn.Module) -> int:
    """Conv + linear MACs of the retrieval forward, counted by PyTorch (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *SIZE))
    return counter.get_total_flops() // 2


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _random_plan(groups, fraction=0.3, seed=1):
    """Drop ``fraction`` of every group at random: ({group: drop}, {group: keep})."""
    gen = torch.Generator().manual_seed(seed)
    drops, keeps = {}, {}
    for g in groups:
        perm = torch.randperm(g.channels, generator=gen)
        cut = int(fraction * g.channels)
        drops[g.name], keeps[g.name] = perm[:cut], perm[cut:]  # keep is unsorted on purpose
    return drops, keeps


CASES = [
    ("resnet18", dict(num_classes=7), "internal", False),
    ("resnet18", dict(num_classes=7), "all", True),
    ("resnet34", dict(num_classes=7), "internal", False),
    ("resnet34", dict(neck="none"), "all", False),
    ("resnet50", dict(num_classes=7), "internal", False),
    ("resnet50", dict(neck="none", num_classes=7, pooling="max", last_stride=2), "all", True),
    ("resnet50", dict(embedding_dim=24, num_classes=7, pooling="gem"), "all", True),
]


# The fast lane keeps both ResNet-18 cases and one bottleneck case (ResNet-50, internal); the rest are slow.
FAST_CASES = {0, 1, 4}


@pytest.mark.parametrize("arch, kwargs, scope, last", [
    pytest.param(*c, id=f"{c[0]}-{c[2]}-{i}", marks=() if i in FAST_CASES else pytest.mark.slow)
    for i, c in enumerate(CASES)])
def test_pruning_zeroed_channels_leaves_outputs_unchanged(arch, kwargs, scope, last, tmp_path):
    model = build_model(arch, **kwargs)
    _randomize_norms(model)
    model.eval()
    groups = find_channel_groups(model, scope=scope, include_last_stage=last)
    drops, keeps = _random_plan(groups)
    for g in groups:
        zero_group(model, g, drops[g.name])
    # Float32 rounding differs once the summation order changes, at about 1e-7 of the output
    # scale per layer; a float64 copy shows the removal itself is exact to 1e-5 absolute.
    model64 = copy.deepcopy(model).double()
    x = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        ref, (ref_feat, ref_logits) = model(x), model(x, with_logits=True)
        ref64 = model64(x.double())
    params, macs, numel = _n_params(model), _macs(model), sum(t.numel() for t in model.state_dict().values())

    apply_plan(model, groups, keeps)
    apply_plan(model64, groups, keeps)
    with torch.no_grad():
        out, (feat, logits) = model(x), model(x, with_logits=True)
        out64 = model64(x.double())

    # When the feature's own channels are pruned, compare the kept columns.
    feature_group = "stream.embedding" if kwargs.get("embedding_dim") else "stream.layer4"
    columns = keeps[feature_group].sort().values if feature_group in keeps else slice(None)
    scale = ref.abs().max().item()
    assert out.shape == ref[:, columns].shape
    assert (out - ref[:, columns]).abs().max().item() <= 1e-5 * max(1.0, scale)
    assert (feat - ref_feat[:, columns]).abs().max().item() <= 1e-5 * max(1.0, ref_feat.abs().max().item())
    if ref_logits is not None:  # the BNNeck is zeroed too, so the classifier sees exact zeros
        assert (logits - ref_logits).abs().max().item() <= 1e-5 * max(1.0, ref_logits.abs().max().item())
    # GeM clamps at eps, so a silenced channel pools to 1e-6 rather than 0: still far inside 1e-5.
    assert (out64 - ref64[:, columns]).abs().max().item() <= 1e-5

    assert _n_params(model) < params and _macs(model) < macs
    assert sum(t.numel() for t in model.state_dict().values()) < numel
    fresh_keys = set(build_model(arch, **kwargs).state_dict())
    assert set(model.state_dict()) == fresh_keys  # no masks or extra buffers left behind

    path = save_checkpoint(tmp_path / "pruned.pt", model, {"arch": arch, **kwargs})
    assert torch.load(path, weights_only=True)["widths"] == module_widths(model)
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out, rtol=0, atol=0)


def test_prune_group_slices_each_role():
    model = build_model("resnet18", num_classes=4)
    _randomize_norms(model)
    group = next(g for g in find_channel_groups(model, scope="all") if g.name == "stream.layer2")
    old = {name: copy.deepcopy(model.get_submodule(name)) for name in group.producers + group.norms + group.consumers}
    keep = [5, 0, 77, 127]
    prune_group(model, group, keep)
    index = torch.tensor(sorted(keep))
    for name in group.producers:
        new = model.get_submodule(name)
        assert isinstance(new, nn.Conv2d) and new.out_channels == 4 and new.in_channels == old[name].in_channels
        assert torch.equal(new.weight, old[name].weight[index])
        assert (new.stride, new.padding, new.kernel_size) == (old[name].stride, old[name].padding,
                                                               old[name].kernel_size)
    for name in group.norms:
        new = model.get_submodule(name)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(new, attr), getattr(old[name], attr)[index])
        assert new.eps == old[name].eps and new.momentum == old[name].momentum
        assert new.num_batches_tracked == old[name].num_batches_tracked
    for name in group.consumers:
        new = model.get_submodule(name)
        assert new.in_channels == 4 and torch.equal(new.weight, old[name].weight[:, index])
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_last_stage_keeps_frozen_neck_bias_and_training_mode():
    model = build_model("resnet18", num_classes=4).train()
    groups = find_channel_groups(model, scope="all", include_last_stage=True)
    layer4 = next(g for g in groups if g.name == "stream.layer4")
    prune_group(model, layer4, list(range(0, 512, 2)))
    assert model.neck.num_features == 256 and model.classifier.in_features == 256
    assert not model.neck.bias.requires_grad and model.neck.weight.requires_grad
    assert all(m.training for m in model.modules())
    model(torch.randn(2, 3, *SIZE), with_logits=True)[1].sum().backward()  # the pruned model still trains


def test_zero_group_silences_channels_after_batchnorm():
    model = build_model("resnet18")
    _randomize_norms(model)
    model.eval()
    group = find_channel_groups(model)[0]  # layer1.0.conv1 -> bn1
    zero_group(model, group, [1, 3])
    seen = {}
    model.layer1[0].bn1.register_forward_hook(lambda m, i, o: seen.setdefault("bn1", o))
    with torch.no_grad():
        model(torch.randn(2, 3, *SIZE))
    assert seen["bn1"][:, [1, 3]].abs().max() == 0
    assert seen["bn1"][:, [0, 2]].abs().max() > 0


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("bad, error, message", [
    ({"layer1.0.conv1": [0, 1], "nope": [0]}, ValueError, "unknown groups \\['nope'\\]"),
    ({"layer1.0.conv1": [0, 1], "layer4.1.conv1": []}, ValueError, "keeps no channel"),
    ({"layer1.0.conv1": [0, 1], "layer4.1.conv1": [0, 512]}, IndexError, "\\[512\\] are outside 0..511"),
    ({"layer1.0.conv1": [0, 1], "layer4.1.conv1": [-1, 3]}, IndexError, "outside"),
    ({"layer1.0.conv1": [0, 1], "layer4.1.conv1": [3, 3]}, ValueError, "repeat"),
    ({"layer1.0.conv1": [0, 1], "layer4.1.conv1": [0.5]}, TypeError, "integers"),
])
def test_bad_plans_are_refused_before_anything_changes(bad, error, message):
    model = build_model("resnet18")
    groups = find_channel_groups(model)
    before, widths = _state(model), module_widths(model)
    with pytest.raises(error, match=message):
        apply_plan(model, groups, bad)
    assert module_widths(model) == widths
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_stale_groups_are_refused_and_pruning_can_be_repeated():
    model = build_model("resnet50", num_classes=3)
    groups = find_channel_groups(model, scope="all")
    plan = {g.name: list(range(g.channels // 2)) for g in groups}
    apply_plan(model, groups, plan)
    with pytest.raises(ValueError, match="stale"):
        apply_plan(model, groups, plan)
    again = find_channel_groups(model, scope="all")
    assert [g.channels for g in again] == [g.channels // 2 for g in groups]
    apply_plan(model, again, {g.name: [0] for g in again})
    assert model.layer3[0].conv3.out_channels == 1 and model.layer3[0].conv2.out_channels == 1
    assert model(torch.randn(2, 3, *SIZE)).shape == (2, 2048)


def test_full_keep_leaves_the_layers_untouched():
    model = build_model("resnet18")
    groups = find_channel_groups(model)
    conv = model.layer1[0].conv1
    apply_plan(model, groups, {"layer1.0.conv1": range(64)})
    assert model.layer1[0].conv1 is conv


def test_surgery_keeps_a_channels_last_model_channels_last():
    torch.manual_seed(0)
    model = build_model("resnet18").eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 32).contiguous(memory_format=torch.channels_last)
    groups = find_channel_groups(model, scope="all")
    plan = {g.name: list(range(0, g.channels, 2)) for g in groups}
    reference = apply_plan(copy.deepcopy(model).to(memory_format=torch.contiguous_format), groups, plan)
    apply_plan(model, groups, plan)
    three_by_three = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert three_by_three and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                                  for w in three_by_three)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x.contiguous()), atol=1e-5, rtol=1e-5)
