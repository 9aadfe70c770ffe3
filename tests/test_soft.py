"""Soft schedules (SFP as ``l2``, PSFP, soft FPGM): what is zeroed, the rate curves, regrowth and the final cut."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import fsolve

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
    got = [0.5 * exponential_curve(0.75)(epoch, 8) for epoch in range(8)]
    np.testing.assert_allclose(got, expected, atol=1e-9)
    lab = [exponential_curve(0.25)(epoch, 16) for epoch in range(16)]
    assert lab[1] == pytest.approx(0.25, abs=1e-9) and lab[-1] == pytest.approx(1.0)  # P/4 at 1/8 (D = 0.147)
    assert (1 - 0.147 ** (1 / 8)) / (1 - 0.147) == pytest.approx(0.25, abs=5e-4)  # the lab code's constant


def test_psfp_zeroes_the_smallest_l2_filters_on_the_curve_then_removes_them():
    model = _model()
    loop = _loop(model, epochs=8)
    pruner = get_pruner("psfp", layer_rates={"layer2.0.conv1": 0.5})
    pruner.on_train_start(loop)
    conv, bn = model.layer2[0].conv1, model.layer2[0].bn1
    bn_weight = bn.weight.detach().clone()
    curve = _paper_curve(8, 0.5)
    for epoch in range(8):
        pruner.on_epoch_end(loop, epoch)
        zeroed = pruner.schedule.masks["layer2.0.conv1"]
        # 128 channels: keep floor(128 (1 - P_t)) at each epoch.
        assert len(zeroed) == 128 - kept(128, curve[epoch]), epoch
        assert torch.all(conv.weight[zeroed] == 0)
        assert torch.equal(bn.weight.detach(), bn_weight)  # the BN is not zeroed (the reference zeroes conv only)
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    survivors = sorted(set(range(128)) - set(zeroed))
    assert survivors == sorted(torch.argsort(norms, descending=True, stable=True)[:64].tolist())
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


def test_soft_fpgm_masks_gradients_of_zeroed_filters():
    model = _model()
    pruner = get_pruner("fpgm", layer_rates={"layer2.0.conv1": 0.25}, mode="soft")
    pruner.on_train_start(_loop(model, 4))
    pruner.on_epoch_end(_loop(model, 4), 0)
    zeroed = pruner.schedule.masks["layer2.0.conv1"]
    _sgd_steps(model, 5, hooks=[pruner])
    assert torch.all(model.layer2[0].conv1.weight[zeroed] == 0)  # fresh momentum, masked gradient: stays at 0
    pruned = pruner.finalize(model)
    assert pruned.layer2[0].conv1.out_channels == 96


def test_finalize_without_training_cuts_at_the_full_rate():
    model = _model()
    pruner = get_pruner("psfp", rate=0.5, scope="all")
    pruned = pruner.finalize(model)
    assert pruned.layer1[0].conv1.out_channels == 32 and pruned.layer3[0].conv1.out_channels == 128
