"""Soft schedules (SFP as ``l2``, PSFP, soft FPGM): what is zeroed, the rate curves, regrowth and the final cut."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import fsolve
from torch import nn

from reid_prune import build_model
from reid_prune.losses import batch_hard_triplet_loss
from reid_prune.pruners import get_pruner
from reid_prune.pruners.budget import kept
from reid_prune.pruners.schedules import exponential_curve


def _model():
    torch.manual_seed(0)
    return build_model("resnet18")


def _loop(model, epochs):
    return SimpleNamespace(model=model, epochs=epochs, can_evaluate=False)


def _paper_curve(total, final_rate, share=0.75):
    """P_t = a e^(-k t) + b with P_0 = 0, P_(T/8) = share x P, P_T = P, solved by fsolve on (a, b, k)."""
    def equations(v):
        a, b, k = v
        return [a + b, a * np.exp(-k * total / 8) + b - share * final_rate, a * np.exp(-k * total) + b - final_rate]

    a, b, k = fsolve(equations, [-final_rate, final_rate, 1.0], xtol=1e-14)
    return [a * np.exp(-k * t) + b for t in range(1, total + 1)]


def test_psfp_default_curve_is_the_papers():
    # T = 8 epochs, P = 0.5: the pruned fraction after each epoch, from the paper's three conditions.
    expected = _paper_curve(8, 0.5)
    assert expected[0] == pytest.approx(0.375, abs=1e-9)  # 3/4 of P after 1/8 of training
    got = [0.5 * exponential_curve(0.75)(done, 8) for done in range(1, 9)]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert exponential_curve(0.75)(0, 8) == 0  # P_0 = 0: nothing is zeroed before the first epoch
    lab = [exponential_curve(0.25)(done, 16) for done in range(1, 17)]
    assert lab[1] == pytest.approx(0.25, abs=1e-9) and lab[-1] == pytest.approx(1.0)  # P/4 at 1/8 (D = 0.147)
    assert (1 - 0.147 ** (1 / 8)) / (1 - 0.147) == pytest.approx(0.25, abs=5e-4)  # the lab code's constant


def _flat_and_spiky(conv):
    """Half the filters flat (every weight v in [0.01, 0.02)), half spiky (one weight s in [1, 2)), shuffled.

    Flat: L2 = 24 v < 0.48 but L1 = 576 v > 5.7; spiky: L2 = L1 = s. So the flat filters have the
    smallest L2 norms and the largest L1 norms. Returns the flat channels in ascending L2 order.
    """
    g = torch.Generator().manual_seed(4)
    flat = torch.randperm(128, generator=g)[:64]
    v, s = 0.01 + 0.01 * torch.rand(64, generator=g), 1 + torch.rand(64, generator=g)
    spiky = [c for c in range(128) if c not in set(flat.tolist())]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[flat] = v.reshape(-1, 1, 1, 1).expand(-1, *conv.weight.shape[1:])
        conv.weight[spiky, 0, 0, 0] = s
    return flat[torch.argsort(v)].tolist()


def test_psfp_zeroes_the_smallest_l2_filters_on_the_curve_then_removes_them():
    model = _model()
    loop = _loop(model, epochs=8)
    conv, bn = model.layer2[0].conv1, model.layer2[0].bn1
    by_l2 = _flat_and_spiky(conv)
    pruner = get_pruner("psfp", layer_rates={"layer2.0.conv1": 0.5})
    pruner.on_train_start(loop)
    assert not any(pruner.schedule.masks.get("layer2.0.conv1", []))  # P_0 = 0
    bn_weight = bn.weight.detach().clone()
    curve = _paper_curve(8, 0.5)
    for epoch in range(8):
        pruner.on_epoch_end(loop, epoch)
        zeroed = pruner.schedule.masks["layer2.0.conv1"]
        # 128 channels: keep floor(128 (1 - P_t)) at each epoch, the lowest L2 norms (not L1) zeroed.
        assert len(zeroed) == 128 - kept(128, curve[epoch]), epoch
        assert sorted(zeroed) == sorted(by_l2[: len(zeroed)]), epoch
        assert torch.all(conv.weight[zeroed] == 0)
        assert torch.equal(bn.weight.detach(), bn_weight)  # the BN is not zeroed (the reference zeroes conv only)
    survivors = sorted(set(range(128)) - set(zeroed))
    pruned = pruner.finalize(model)
    assert pruned.layer2[0].conv1.out_channels == 64
    torch.testing.assert_close(pruned.layer2[0].bn1.weight, bn_weight[survivors])


def _sgd_steps(model, steps, hooks=()):
    """SGD with momentum on random images (train-mode BN), calling the hooks' gradient event."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        images = torch.randn(8, 3, 64, 32, generator=generator)
        loss = batch_hard_triplet_loss(model(images), torch.arange(4).repeat_interleave(2))
        optimizer.zero_grad()
        loss.backward()
        for hook in hooks:
            hook.on_after_backward(_loop(model, 1))
        optimizer.step()


@pytest.mark.slow
@pytest.mark.parametrize("zero_bn", [False, True])
def test_a_zeroed_filter_regrows_only_when_its_bn_is_left_alone(zero_bn):
    model = _model()
    with torch.no_grad():  # as in a trained network, the BN shifts are not all 0 (at 0 the ReLU would block the gradient)
        model.layer2[0].bn1.bias.fill_(0.1)
    pruner = get_pruner("l2", layer_rates={"layer2.0.conv1": 0.25})
    pruner.on_train_start(_loop(model, 4))
    pruner.on_epoch_end(_loop(model, 4), 0)  # SFP: the full rate from the first epoch
    zeroed = pruner.schedule.masks["layer2.0.conv1"]
    assert len(zeroed) == 32
    if zero_bn:  # what the previous implementation did: BN scale and shift zeroed too
        pruner.session.zero(model, pruner.schedule.masks, norms=True)
    _sgd_steps(model, 20)
    norms = model.layer2[0].conv1.weight.detach().flatten(1).norm(dim=1)
    others = norms[[c for c in range(128) if c not in zeroed]]
    if zero_bn:  # a silent channel gets exactly zero gradient in train-mode BN: it can never come back
        assert torch.all(norms[zeroed] == 0)
    else:
        assert norms[zeroed].min() > 0.05 * others.mean(), (norms[zeroed].min(), others.mean())


@pytest.mark.parametrize("mask_gradients", [True, False])
def test_soft_fpgm_masks_gradients_of_zeroed_filters(mask_gradients):
    model = _model()
    with torch.no_grad():  # at BN shift 0 the ReLU would block a zeroed filter's gradient, masked or not
        model.layer2[0].bn1.bias.fill_(0.1)
    pruner = get_pruner("fpgm", layer_rates={"layer2.0.conv1": 0.25}, mode="soft", mask_gradients=mask_gradients)
    pruner.on_train_start(_loop(model, 4))
    pruner.on_epoch_end(_loop(model, 4), 0)
    zeroed = pruner.schedule.masks["layer2.0.conv1"]
    _sgd_steps(model, 5, hooks=[pruner])
    norms = model.layer2[0].conv1.weight.detach()[zeroed].flatten(1).norm(dim=1)
    if mask_gradients:  # fresh momentum, masked gradient: stays at 0
        assert torch.all(norms == 0)
    else:
        assert torch.all(norms > 0)
    pruned = pruner.finalize(model)
    assert pruned.layer2[0].conv1.out_channels == 96


@pytest.mark.parametrize("reset", [True, False])
def test_psfp_resets_the_bn_statistics_of_zeroed_channels(reset):
    model = _model()
    bn = model.layer2[0].bn1
    with torch.no_grad():
        bn.running_mean.copy_(torch.linspace(-1, 1, 128))
        bn.running_var.copy_(torch.linspace(2, 3, 128))
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    pruner = get_pruner("psfp", layer_rates={"layer2.0.conv1": 0.5}, reset_bn_stats=reset)
    pruner.on_train_start(_loop(model, 8))
    pruner.on_epoch_end(_loop(model, 8), 0)
    zeroed = pruner.schedule.masks["layer2.0.conv1"]
    others = [c for c in range(128) if c not in zeroed]
    assert len(zeroed) == 48  # 128 - floor(128 (1 - 3/4 x 0.5))
    assert torch.equal(bn.running_mean[others], mean[others]) and torch.equal(bn.running_var[others], var[others])
    if reset:  # the lab code's reset: mean 0, variance 1
        assert torch.all(bn.running_mean[zeroed] == 0) and torch.all(bn.running_var[zeroed] == 1)
    else:
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2 = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x))))


def _tiny():
    """One internal group, ``0.conv1``, with the filters (3, 0, 0), (0, 1, 0), (0, 0, 2), (1, 1, 1)."""
    model = nn.Sequential(_Block())
    with torch.no_grad():
        model[0].conv1.weight.copy_(torch.tensor([[3.0, 0, 0], [0, 1, 0], [0, 0, 2], [1, 1, 1]]).reshape(4, 3, 1, 1))
    return model


# L2 norms 3, 1, 2, 1.73 and distance sums to the other filters 9.22, 6.81, 7.57, 5.60 (FPGM): at rate 0.5
# both zero channels 1 and 3. PSFP's curve is 0 at t = 0.
@pytest.mark.parametrize("method, options, zeroed", [("l2", {}, [1, 3]), ("fpgm", {"mode": "soft"}, [1, 3]),
                                                     ("psfp", {}, [])])
def test_a_fresh_run_zeroes_before_the_first_epoch_and_a_resumed_one_keeps_its_masks(method, options, zeroed):
    model = _tiny()
    before = model[0].conv1.weight.detach().clone()
    pruner = get_pruner(method, rate=0.5, input_size=(4, 4), **options)
    pruner.on_train_start(_loop(model, 4))  # SFP's and FPGM's init_mask / do_mask before the epoch loop
    weight = model[0].conv1.weight.detach()
    assert [c for c in range(4) if torch.all(weight[c] == 0)] == zeroed
    live = [c for c in range(4) if c not in zeroed]
    assert torch.equal(weight[live], before[live])
    resumed, model = get_pruner(method, rate=0.5, input_size=(4, 4), **options), _tiny()
    resumed.load_state_dict({"masks": {"0.conv1": [0]}, "epochs_done": 1})
    resumed.on_train_start(_loop(model, 4))  # the stored mask again, not a new choice
    assert [c for c in range(4) if torch.all(model[0].conv1.weight[c] == 0)] == [0]


def test_finalize_without_training_cuts_at_the_full_rate():
    model = _model()
    pruner = get_pruner("psfp", rate=0.5, scope="all")
    pruned = pruner.finalize(model)
    assert pruned.layer1[0].conv1.out_channels == 32 and pruned.layer3[0].conv1.out_channels == 128


def test_the_share_due_is_read_as_the_decimal_it_prints_as():
    # A curve at 0.45 of layer1.0.conv1's cut at rate 0.3 (64 -> 44, a cut of 20) zeroes 0.45 x 20 = 9 channels.
    # The float 0.45 is a little above 0.45: read in binary, 64 - 0.45 x 20 falls just under 55, so 10 would go.
    model = _model()
    pruner = get_pruner("l2", layer_rates={"layer1.0.conv1": 0.3})
    pruner.schedule.curve = lambda done, total: 0.45
    pruner.on_train_start(_loop(model, 4))
    assert len(pruner.schedule.masks["layer1.0.conv1"]) == 9
