"""ThiNet and Channel Pruning: sampling, contribution Gram, greedy and LASSO selection, least-squares refit."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reid_prune import build_model
from reid_prune.checkpoint import load_model, save_checkpoint
from reid_prune.config import ConfigError
from reid_prune.pruners import PruneContext, get_pruner
from reid_prune.pruners.criteria import reconstruction
from reid_prune.pruners.criteria.reconstruction import (
    _ridge,
    greedy_removal_order,
    lasso_scores,
    reconstruction_error,
    refit_weights,
    thinet_scores,
)
from reid_prune.pruners.criteria.sampling import (
    contribution_gram,
    contribution_sums,
    conv_outputs,
    derives_samples,
    follower_patches,
    gather_patches,
    sample_patches,
)
from reid_prune.pruners.groups import find_channel_groups
from reid_prune.pruners.surgery import apply_plan


def _batches(count=2, size=8, height=64, width=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, height, width, generator=gen), torch.arange(size // 2).repeat_interleave(2))
            for _ in range(count)]


def _rows(patches, weight):
    """Contribution rows by loops: one row per (patch p, filter f), entry c = sum_a W[f, c, a] X[p, c, a]."""
    n, c, k = patches.shape
    w = weight.reshape(weight.shape[0], c, k)
    rows = [[float((w[f, ch] * patches[p, ch]).sum()) for ch in range(c)] for p in range(n) for f in range(w.shape[0])]
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ sampling and Gram


def test_gathered_patches_reproduce_the_conv_output():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2, bias=True)
    x = torch.randn(2, 3, 9, 7)
    out = conv(x)
    image, row, col = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 4, 2, 3]), torch.tensor([3, 0, 1, 2])
    patches = gather_patches(x, conv, image, row, col)
    assert patches.shape == (4, 3, 9)
    got = conv_outputs(patches, conv.weight) + conv.bias.double()
    torch.testing.assert_close(got, out[image, :, row, col].double(), atol=1e-5, rtol=1e-5)


def test_sample_patches_draws_distinct_locations_per_image_and_stops_early():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(6, 2, 1))
    calls = []
    model[2].register_forward_hook(lambda m, i, o: calls.append(1))
    batches = [(torch.randn(3, 3, 8, 6), None), (torch.randn(3, 3, 8, 6), None)]
    (patches,) = sample_patches(model, batches, ["2"], 5, torch.Generator().manual_seed(0))
    assert patches.shape == (6 * 5, 5, 9) and not calls  # the consumer itself never ran
    with torch.no_grad():
        y = model[:3](torch.cat([b[0] for b in batches]))  # (6, 6, 4, 3): 12 locations per image
    got = conv_outputs(patches, model[2].weight) + model[2].bias.double()
    for image in range(6):
        candidates = y[image].flatten(1).T.double()  # (12, 6)
        distances = torch.cdist(got[image * 5:(image + 1) * 5], candidates)  # (5 samples, 12 locations)
        assert distances.min(dim=1).values.max() < 1e-4  # each sample is an output location of its own image
        assert len(set(distances.argmin(dim=1).tolist())) == 5  # at distinct locations
    (every,) = sample_patches(model, batches[:1], ["2"], 50, torch.Generator().manual_seed(0))
    assert every.shape[0] == 3 * 12  # capped at the grid


def test_thinet_samples_ten_locations_per_image_by_default(monkeypatch):
    sampled, real = [], reconstruction.sample_patches

    def recording(*args):
        patches = real(*args)
        sampled.append((args[3], patches[0].shape[0]))  # (locations asked per image, rows drawn)
        return patches

    monkeypatch.setattr(reconstruction, "sample_patches", recording)
    pruner = get_pruner("thinet", layer_rates={"layer1.0.conv1": 0.5})
    pruner.prune(build_model("resnet18").eval(), PruneContext(data=_batches(1), num_batches=1))
    assert sampled == [(10, 8 * 10)]  # 8 images, 10 locations each (16 x 8 = 128 to choose from)


def test_contribution_gram_equals_the_gram_of_explicit_rows():
    gen = torch.Generator().manual_seed(1)
    patches = torch.randn(5, 3, 4, generator=gen)
    weight = torch.randn(2, 3, 2, 2, generator=gen)
    rows = _rows(patches.double(), weight.double())
    gram = contribution_gram(patches, weight, torch.float64)
    torch.testing.assert_close(gram, rows.T @ rows)
    torch.testing.assert_close(contribution_gram(patches, weight), gram, rtol=1e-5, atol=1e-5)  # float32 products
    outputs = conv_outputs(patches, weight).reshape(-1)  # row sums are the outputs
    torch.testing.assert_close(rows.sum(dim=1), outputs)
    torch.testing.assert_close(gram.sum(), outputs.pow(2).sum())


# ------------------------------------------------------------------ ThiNet greedy


def _thinet_reference(rows, remove):
    """The reference's loop (ThiNet_ICCV value_sum): add the channel minimising ||sum of removed columns||."""
    removed, running = [], torch.zeros(rows.shape[0], dtype=torch.float64)
    for _ in range(remove):
        costs = {j: float((running + rows[:, j]).norm()) for j in range(rows.shape[1]) if j not in removed}
        pick = min(costs, key=lambda j: (costs[j], j))
        removed.append(pick)
        running += rows[:, pick]
    return removed


def test_greedy_first_pick_is_the_brute_force_minimum_and_follows_the_reference_loop():
    gen = torch.Generator().manual_seed(2)
    patches = torch.randn(6, 7, 9, generator=gen)
    weight = torch.randn(3, 7, 3, 3, generator=gen)
    rows = _rows(patches.double(), weight.double())
    order = greedy_removal_order(contribution_gram(patches, weight, torch.float64))
    energies = [float(rows[:, c].pow(2).sum()) for c in range(7)]
    assert int(order[0]) == int(np.argmin(energies))
    assert order[:6].tolist() == _thinet_reference(rows, 6)
    assert sorted(order.tolist()) == list(range(7))


def test_thinet_removes_a_channel_with_zero_contribution_first():
    model = build_model("resnet18").eval()
    with torch.no_grad():
        model.layer1[0].bn1.bias.fill_(1.0)  # no channel is dead after the ReLU ...
        model.layer1[0].conv2.weight[:, 37] = 0  # ... but channel 37 no longer reaches the next layer
    original = model.layer1[0].conv1.weight.detach().clone()
    (patches,) = sample_patches(model, _batches(), ["layer1.0.conv2"], 10, torch.Generator().manual_seed(0))
    gram = contribution_gram(patches, model.layer1[0].conv2.weight)
    assert int(thinet_scores(gram, None, 0, 63).argmin()) == 37  # removed first
    pruner = get_pruner("thinet", layer_rates={"layer1.0.conv1": 1 / 64})
    pruner.prune(model, PruneContext(data=_batches(), num_batches=2))
    kept = model.layer1[0].conv1.weight
    assert kept.shape[0] == 63
    assert not any(torch.equal(row, original[37]) for row in kept)
    errors = pruner.summary()["reconstruction_error"]
    assert list(errors) == ["layer1.0.conv1"]  # the other groups were not touched
    assert errors["layer1.0.conv1"]["sliced"] == pytest.approx(0.0, abs=1e-6)
    gram = torch.rand(5, 5, dtype=torch.float64)
    gram = gram @ gram.T
    gram[2], gram[:, 2] = 0, 0
    assert int(greedy_removal_order(gram)[0]) == 2


# ------------------------------------------------------------------ LASSO


def _stats(z):
    """(Gram, column sums, rows) of explicit contribution rows z (N, C)."""
    z = torch.as_tensor(z, dtype=torch.float64)
    return z.T @ z, z.sum(dim=0), z.shape[0]


def test_lasso_with_an_intercept_ignores_a_constant_channel():
    # Channel 0 is about the constant 5; channels 1 and 2 are zero-mean. With an intercept (the reference's
    # scikit-learn Lasso default) the constant is absorbed by it, so keeping 2 keeps {1, 2}.
    rng = np.random.default_rng(0)
    z = np.column_stack([5 + 0.01 * rng.normal(size=200), rng.normal(size=200), 0.5 * rng.normal(size=200)])
    z[:, 1:] -= z[:, 1:].mean(axis=0)
    scores = lasso_scores(*_stats(z), keep=2)
    assert set(torch.nonzero(scores).flatten().tolist()) == {1, 2}
    # Without the intercept the constant dominates y = z 1 and is picked first (the departure this fixes).
    from sklearn.linear_model import lasso_path

    _, coefs, _ = lasso_path(z, z.sum(axis=1))
    first = next(c for c in coefs.T if np.count_nonzero(c))
    assert np.flatnonzero(first).tolist() == [0]


def test_lasso_scores_satisfy_the_lasso_optimality_conditions():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(60, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)  # correlated, non-zero means
    gram, sums, rows = _stats(z)
    mean = sums / rows
    covariance = gram / rows - torch.outer(mean, mean)
    for keep in range(1, 6):
        beta = lasso_scores(gram, sums, rows, keep)
        assert int(torch.count_nonzero(beta)) == keep
        # |beta| is returned: recover the signed solution by solving on the support, then check KKT.
        support = beta > 0
        covariance_n = covariance / covariance.diagonal().max()
        corr = covariance_n.sum(dim=1)
        signs = torch.sign(torch.linalg.solve(covariance_n[support][:, support], corr[support]))
        # On the support the LASSO stationarity is C_SS b_S = c_S - lam s_S; find lam from |b| = |beta|.
        b = beta[support] * signs
        lam = ((corr[support] - covariance_n[support][:, support] @ b) / signs).mean()
        torch.testing.assert_close(covariance_n[support][:, support] @ b, corr[support] - lam * signs,
                                   atol=1e-8, rtol=0)
        gradient_off = corr[~support] - covariance_n[~support][:, support] @ b
        assert lam > 0 and bool(torch.all(gradient_off.abs() <= lam + 1e-9))


def test_lasso_drops_channels_with_zero_contribution():
    gen = torch.Generator().manual_seed(4)
    patches = torch.randn(60, 8, 1, generator=gen)
    weight = torch.randn(5, 8, 1, 1, generator=gen)
    weight[:, [1, 6]] = 0  # channels 1 and 6 contribute nothing
    gram, sums = contribution_gram(patches, weight, torch.float64), contribution_sums(patches, weight)
    for keep in (6, 4, 2):
        scores = lasso_scores(gram, sums, 60 * 5, keep)
        assert int(torch.count_nonzero(scores)) == keep
        assert scores[1] == 0 and scores[6] == 0


def test_contribution_sums_equal_the_sums_of_explicit_rows():
    gen = torch.Generator().manual_seed(9)
    patches = torch.randn(7, 5, 9, generator=gen)
    weight = torch.randn(3, 5, 3, 3, generator=gen)
    torch.testing.assert_close(contribution_sums(patches, weight), _rows(patches.double(), weight.double()).sum(0))


def test_lasso_penalty_reaches_every_exact_count():
    gen = torch.Generator().manual_seed(5)
    patches = torch.randn(80, 12, 9, generator=gen)
    weight = torch.randn(6, 12, 3, 3, generator=gen) * torch.linspace(0.2, 2.0, 12).reshape(1, 12, 1, 1)
    gram, sums = contribution_gram(patches, weight, torch.float64), contribution_sums(patches, weight)
    for keep in range(1, 12):
        assert int(torch.count_nonzero(lasso_scores(gram, sums, 80 * 6, keep))) == keep


# ------------------------------------------------------------------ least-squares refit


def _correlated_net():
    """conv0 -> BN -> ReLU -> consumer conv; channel 5 = 2 x channel 1 and channel 6 ~ channel 2 + noise."""
    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 6, 3, padding=1, bias=False)).eval()
    with torch.no_grad():
        net[0].weight[5] = 2 * net[0].weight[1]
        net[0].weight[6] = net[0].weight[2] + 0.1 * torch.randn_like(net[0].weight[2])
    return net


def test_least_squares_lowers_reconstruction_error_on_samples_and_fresh_data():
    net = _correlated_net()
    keep = [0, 1, 2, 3, 4, 7]  # channels 5 and 6 removed: the kept ones can stand in for them
    weight = net[3].weight.detach()
    (fit,) = sample_patches(net, _batches(4, 8, 16, 16, seed=1), ["3"], 20, torch.Generator().manual_seed(0))
    (fresh,) = sample_patches(net, _batches(1, 8, 16, 16, seed=2), ["3"], 50, torch.Generator().manual_seed(1))
    sliced = weight[:, keep]
    for how in ("weights", "scale"):
        refit = refit_weights(fit, weight, keep, how)
        assert refit.shape == (6, 6, 3, 3)
        for patches in (fit, fresh):
            before = reconstruction_error(patches, weight, keep, sliced)
            assert reconstruction_error(patches, weight, keep, refit) <= before
    refit = refit_weights(fit, weight, keep, "weights")
    assert reconstruction_error(fresh, weight, keep, refit) < 0.5 * reconstruction_error(fresh, weight, keep, sliced)
    torch.testing.assert_close(refit_weights(fit, weight, keep, "none"), sliced.double())


def test_scale_refit_is_the_least_squares_fit_of_explicit_rows():
    # ThiNet Sec. 3.3: w = argmin sum over rows (y - sum_{c in S} w_c x_c)^2, y the row sum over all channels.
    gen = torch.Generator().manual_seed(10)
    patches = torch.randn(12, 5, 9, generator=gen)
    weight = torch.randn(3, 5, 3, 3, generator=gen)
    rows = _rows(patches.double(), weight.double()).numpy()  # (12 patches x 3 filters, 5 channels)
    keep = [0, 2, 3]
    factors = np.linalg.lstsq(rows[:, keep], rows.sum(axis=1), rcond=None)[0]
    assert np.abs(factors - 1).max() > 0.05  # a no-op refit would not pass
    expected = weight.double().numpy()[:, keep] * factors.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(refit_weights(patches, weight, keep, "scale").numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rows", [5, 40])  # kernel form (fewer rows than unknowns) and normal equations
def test_ridge_solutions_match_the_closed_form(rows):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(rows, 12, generator=gen, dtype=torch.float64)
    r = torch.randn(rows, 3, generator=gen, dtype=torch.float64)
    at = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    for alpha, solution, applied in zip((0.1, 2.0), _ridge(x, r, [0.1, 2.0]), _ridge(x, r, [0.1, 2.0], at=at),
                                        strict=True):
        expected = torch.linalg.solve(x.T @ x + alpha * torch.eye(12, dtype=torch.float64), x.T @ r)
        torch.testing.assert_close(solution, expected)
        torch.testing.assert_close(applied, at @ expected)


def test_refit_never_worse_on_samples_even_with_more_unknowns_than_rows():
    gen = torch.Generator().manual_seed(7)
    patches = torch.randn(30, 16, 9, generator=gen).clamp_min(0)  # 30 rows, 12 x 9 unknowns per filter
    weight = torch.randn(4, 16, 3, 3, generator=gen)
    keep = list(range(12))
    refit = refit_weights(patches, weight, keep, "weights")
    assert reconstruction_error(patches, weight, keep, refit) <= reconstruction_error(patches, weight, keep,
                                                                                     weight[:, keep])


# ------------------------------------------------------------------ schedule and end to end


def test_bottleneck_second_group_samples_equal_a_fresh_pass():
    model = build_model("resnet50").eval()
    groups = {g.name: g for g in find_channel_groups(model)}
    first, second = groups["layer1.0.conv1"], groups["layer1.0.conv2"]
    assert derives_samples(model, first, second) and not derives_samples(model, second, groups["layer1.1.conv1"])
    batches = _batches(1, 4)
    consumers = ["layer1.0.conv2", "layer1.0.conv3"]
    patches, observed = sample_patches(model, batches, consumers, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(follower_patches(model, patches, second), observed, atol=1e-4, rtol=1e-4)
    keep = list(range(0, 64, 2))
    apply_plan(model, [first], {first.name: keep})
    with torch.no_grad():
        model.layer1[0].conv2.weight.mul_(torch.rand_like(model.layer1[0].conv2.weight))  # as a refit would
    fresh_patches, fresh_observed = sample_patches(model, batches, consumers, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fresh_patches, patches[:, keep])
    torch.testing.assert_close(follower_patches(model, patches[:, keep], second), fresh_observed,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["thinet", pytest.param("channel_pruning", marks=pytest.mark.slow)])
def test_prunes_resnet18_end_to_end_and_round_trips(method, tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 32)
    pruner = get_pruner(method, rate=0.5)
    calls = []

    def finetune(net, steps):
        calls.append(steps)
        return net

    pruned = pruner.prune(model, PruneContext(data=_batches(), num_batches=2, finetune=finetune))
    assert calls == []  # finetune_steps defaults to 0
    assert pruned.layer1[0].conv1.out_channels == 32 and pruned.layer4[1].conv2.in_channels == 256
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in build_model("resnet18").parameters())
    errors = pruner.summary()["reconstruction_error"]
    assert len(errors) == 8 and all(e["refit"] <= e["sliced"] + 1e-9 for e in errors.values())
    save_checkpoint(tmp_path / "pruned.pt", pruned)
    reloaded = load_model(tmp_path / "pruned.pt").eval()
    torch.testing.assert_close(reloaded(x), pruned(x))


def test_finetunes_between_pruned_blocks():
    model = build_model("resnet18").eval()
    calls = []

    def finetune(net, steps):
        calls.append((steps, net.layer2[0].conv1.out_channels))
        return net

    rates = {"layer1.0.conv1": 0.5, "layer2.0.conv1": 0.5, "layer3.1.conv1": 0.5}
    pruner = get_pruner("thinet", layer_rates=rates, finetune_steps=3)
    pruner.prune(model, PruneContext(data=_batches(1), num_batches=1, finetune=finetune))
    assert calls == [(3, 128), (3, 64)]  # after layer1.0 and layer2.0, not after the last pruned block
    with pytest.warns(UserWarning, match="no fine-tuning between layers.*finetune_steps=3"):
        get_pruner("thinet", rate=0.5, finetune_steps=3).prune(build_model("resnet18"), PruneContext(data=_batches(1)))


def test_refuses_residual_streams_and_bad_options():
    for method in ("thinet", "channel_pruning"):
        with pytest.raises(ValueError, match="supports scope internal, not 'all'.*residual add"):
            get_pruner(method, rate=0.3, scope="all")
        with pytest.raises(ConfigError, match="prune.options.refit"):
            get_pruner(method, rate=0.3, refit="exact")
        with pytest.raises(ValueError, match="scores channels on data"):
            get_pruner(method, rate=0.3).prune(build_model("resnet18"))
    assert get_pruner("thinet", rate=0.3).requires == "data"
