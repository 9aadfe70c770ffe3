"""Data-driven pruners: Molchanov's Taylor criterion (2017, 2019) and Luo & Wu's entropy, on constructed cases."""

import numpy as np
import pytest
import torch

import reid_prune
from reid_prune import build_model
from reid_prune.checkpoint import load_model, save_checkpoint
from reid_prune.config import ConfigError
from reid_prune.evaluation import complexity
from reid_prune.pruners import PruneContext, get_pruner
from reid_prune.pruners.criteria import Criterion, comparable, keep_top, score_groups
from reid_prune.pruners.criteria.entropy import channel_entropy
from reid_prune.pruners.groups import find_channel_groups
from reid_prune.pruners.schedules import iterative
from reid_prune.pruners.session import PruningSession
from reid_prune.pruners.surgery import prune_group, zero_group

SIZE = (64, 32)


def _model():
    torch.manual_seed(0)
    return build_model("resnet18").eval()


def _batches(count=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, *SIZE, generator=g), torch.arange(4).repeat_interleave(2)) for _ in range(count)]


def _context(batches, **kwargs):
    return PruneContext(data=batches, num_batches=len(batches), **kwargs)


def _params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------- molchanov


@pytest.mark.parametrize("variant, abs_of", [(2017, "example"), (2017, "batch"), (2019, "example")])
def test_taylor_scores_a_dead_channel_zero(variant, abs_of):
    model = _model()
    pruner = get_pruner("molchanov", rate=0.5, scope="all", variant=variant, abs_of=abs_of, input_size=SIZE)
    pruner.setup(model)
    internal = next(g for g in pruner.groups if g.name == "layer1.0.conv1")
    stream = next(g for g in pruner.groups if g.name == "stream.layer2")
    zero_group(model, internal, [5])  # filter and BN affine zero: the BN output is exactly 0
    zero_group(model, stream, [9])  # every conv and BN writing stream channel 9
    scores = score_groups(pruner.criterion, model, pruner.groups, _context(_batches()))
    assert scores[internal.name][5].item() == 0.0
    assert scores[stream.name][9].item() == 0.0
    assert (scores[internal.name] > 0).sum() > internal.channels // 2  # most live channels matter


def _brute_force_taylor(model, groups, batches, variant, abs_of):
    """The formulas written out with autograd: retain dL/da on each BN output after a producer."""
    bn_of = {}  # producer -> the BN reading it, by the torchvision naming of ResNet blocks
    for g in groups:
        for p in g.producers:
            bn_of[p] = p.replace("conv", "bn") if "downsample" not in p else p[:-1] + "1"
    acts = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            acts[name] = output
            return output.clone()  # the in-place ReLU / residual add then leave `output` intact
        return hook

    handles = [model.get_submodule(bn).register_forward_hook(keep(bn)) for bn in bn_of.values()]
    per_batch = {g.name: [] for g in groups}
    for images, pids in batches:
        model.zero_grad()
        reid_prune.losses.batch_hard_triplet_loss(model(images), pids).backward()
        for g in groups:
            total = 0
            for p in g.producers:
                a = acts[bn_of[p]]
                product = (a * a.grad).double()
                total = total + (product.mean(dim=(2, 3)) if variant == 2017 else product.sum(dim=(2, 3)))
            per_batch[g.name].append(total)  # (images, channels)
    for h in handles:
        h.remove()
    expected = {}
    for g in groups:
        terms = per_batch[g.name]
        if variant == 2019:
            expected[g.name] = torch.stack([t.sum(dim=0) ** 2 for t in terms]).mean(dim=0) / len(g.producers)
        else:
            t = torch.cat(terms)
            theta = t.abs().mean(dim=0) if abs_of == "example" else t.mean(dim=0).abs()
            expected[g.name] = theta / theta.norm()
    return expected


@pytest.mark.parametrize("variant, abs_of", [(2017, "example"), (2017, "batch"), (2019, "example")])
def test_taylor_scores_equal_brute_force(variant, abs_of):
    model = _model()
    batches = _batches(2)
    pruner = get_pruner("molchanov", rate=0.5, scope="all", variant=variant, abs_of=abs_of, input_size=SIZE)
    pruner.setup(model)
    assert {g.kind for g in pruner.groups} == {"internal", "stream"}
    raw = score_groups(pruner.criterion, model, pruner.groups, _context(batches))
    assert all(p.grad is None for p in model.parameters())  # scoring computes no weight gradients
    scores = comparable(pruner.criterion, raw)  # 2017: the paper's layer-wise L2 normalisation; 2019: none
    expected = _brute_force_taylor(model, pruner.groups, batches, variant, abs_of)
    for g in pruner.groups:
        scale = expected[g.name].max().item()  # float32 sums: small scores are exact only up to the largest
        torch.testing.assert_close(scores[g.name], expected[g.name], rtol=1e-4, atol=1e-6 * scale)


def test_iterative_schedule_ends_at_keep_counts():
    model = _model().train()
    before = _params(model)
    rounds = []

    def finetune(net, steps):
        rounds.append(steps)
        return net

    pruner = get_pruner("molchanov", rate=0.5, input_size=SIZE, channels_per_step=400, finetune_steps=7,
                        allocation="uniform")
    pruned = pruner.prune(model, _context(_batches(), finetune=finetune))
    total_cut = sum(g.channels for g in pruner.groups)  # half of 1920 internal channels -> 960 = 3 rounds
    assert total_cut == 960 and pruner.schedule.rounds_done == 3
    assert rounds == [7, 7]  # between rounds, not after the last
    assert {g.name: g.channels for g in pruner.groups} == pruner.keep_counts
    assert pruned.layer1[0].conv1.out_channels == 32 and pruned.layer1[0].conv2.in_channels == 32
    assert pruned.training and _params(pruned) < before


def test_2019_ranks_globally_but_keeps_min_channels():
    model = _model()
    pruner = get_pruner("molchanov", rate=0.25, variant=2019, min_channels=2, input_size=SIZE, channels_per_step=120)
    pruner.setup(model)
    by_name = {g.name: g for g in pruner.groups}
    zero_group(model, by_name["layer1.0.conv1"], range(64))  # a whole dead layer: every score is 0
    with torch.no_grad():  # a layer whose responses, hence Taylor terms, are uniformly tiny
        model.layer2[1].bn1.weight.mul_(1e-4)
        model.layer2[1].bn1.bias.mul_(1e-4)
    widths = {g.name: g.channels for g in pruner.groups}
    pruned = pruner.prune(model, _context(_batches()))
    after = {g.name: g.channels for g in pruner.groups}
    assert sum(widths.values()) - sum(after.values()) == 1920 - 1440  # keeps floor(1920 x 0.75) in all
    assert after["layer1.0.conv1"] == 2  # not zero: stopped at min_channels
    assert after["layer2.1.conv1"] == 2  # the tiny layer goes first, far past the 25% rate
    assert min(after.values()) >= 2
    assert pruned(torch.randn(2, 3, *SIZE)).shape == (2, 512)


def test_molchanov_options_are_checked():
    with pytest.raises(ConfigError, match="prune.options.variant: expected one of 2017, 2019, got 2020"):
        get_pruner("molchanov", rate=0.3, variant=2020)
    with pytest.raises(ConfigError, match="prune.options.abs_of"):
        get_pruner("molchanov", rate=0.3, abs_of="element")
    with pytest.raises(ConfigError, match="prune.options.momentum: must lie in \\[0, 1\\), got 1.5"):
        get_pruner("molchanov", rate=0.3, momentum=1.5)
    with pytest.raises(ValueError, match="scores channels on data: pass data="):
        reid_prune.prune(_model(), "molchanov", rate=0.3, input_size=SIZE)


def test_global_ranking_and_round_to_give_uneven_multiples():
    model = _model()
    pruner = get_pruner("molchanov", target_macs=0.6, input_size=SIZE, channels_per_step=300, finetune_steps=0,
                        round_to=8, min_channels=8)
    pruner.prune(model, _context(_batches()))
    widths = {g.name: g.channels for g in pruner.groups}
    assert all(w % 8 == 0 and w >= 8 for w in widths.values()), widths
    # Each group's kept fraction of its own full width (a budget prunes the streams too: 3 streams, 8 conv1s).
    full = {g.name: g.channels for g in find_channel_groups(_model(), scope="all")}
    assert widths.keys() == full.keys() and len(full) == 11
    fractions = [widths[name] / full[name] for name in widths]
    assert max(fractions) - min(fractions) > 0.05  # the ranking, not one rate, decided the widths
    assert abs(complexity(model, SIZE)["macs"] / complexity(_model(), SIZE)["macs"] - 0.6) <= 0.02


def _saved_macs():
    """Brute force: the MACs one channel of each internal group costs, by removing it and counting with complexity()."""
    base = complexity(_model(), SIZE)["macs"]
    saved = {}
    for g in find_channel_groups(_model()):
        model = _model()
        prune_group(model, next(h for h in find_channel_groups(model) if h.name == g.name), range(1, g.channels))
        saved[g.name] = base - complexity(model, SIZE)["macs"]
    return saved


def _cuts(monkeypatch, pruner, model, context):
    """Prune, recording how many channels each group loses in every round (the session's cuts)."""
    rounds, real_cut = [], PruningSession.cut

    def recording(self, net, plan):
        rounds.append({name: self.group(name).channels - len(keep) for name, keep in plan.items()})
        real_cut(self, net, plan)

    monkeypatch.setattr(PruningSession, "cut", recording)
    pruner.prune(model, context)
    monkeypatch.undo()
    return rounds


@pytest.mark.slow
def test_flops_penalty_removes_the_costliest_channels_first(monkeypatch):
    saved = _saved_macs()
    # Uniform rate 0.01: a group of C channels may lose C - floor(0.99 C) (1 of 64, 2 of 128, 3 of 256, 6 of 512).
    may_lose = {g.name: {64: 1, 128: 2, 256: 3, 512: 6}[g.channels] for g in find_channel_groups(_model())}
    expected, left = {}, 4  # a huge penalty: the 4 channels of round 1 come from the costliest groups
    for name in sorted(saved, key=saved.get, reverse=True):
        if left:
            expected[name] = min(may_lose[name], left)
            left -= expected[name]
    rounds = {}
    for penalty in (1e6, 0.0):
        pruner = get_pruner("molchanov", rate=0.01, input_size=SIZE, flops_penalty=penalty, allocation="uniform",
                            channels_per_step=4, finetune_steps=0)
        rounds[penalty] = _cuts(monkeypatch, pruner, _model(), _context(_batches()))
    assert len(rounds[1e6]) == 6 and rounds[1e6][0] == expected  # 24 channels in all, 4 per round
    assert rounds[0.0][0] != expected  # without the penalty the Taylor scores choose


class _Scripted(Criterion):
    """Scores written by hand: ``fn(group, width, scoring round)``, or 1e6 per channel where it returns None."""

    normalizer = "none"

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def scores(self, model, groups, context):
        self.calls += 1
        out = {g.name: self.fn(g.name, g.channels, self.calls) for g in groups}
        return {name: torch.full((g.channels,), 1e6, dtype=torch.float64) if out[name] is None
                else torch.as_tensor(out[name], dtype=torch.float64) for name, g in zip(out, groups)}


def test_flops_penalty_acts_in_the_global_ranking(monkeypatch):
    # Group a (layer1.0.conv1) has the costlier channels, group b (layer4.0.conv1) the lower scores; every other
    # channel scores 1e6. Rate 0.001 of the 1920 channels removes 2. Without the penalty b's two lowest (0.2,
    # 0.25) go. With lambda = 0.3 / (p_a - p_b), p the MFLOPs one channel costs, a's two lowest (0.3, 0.35) fall
    # 0.3 below their unpenalised place: under b's, so the allocation takes them from a.
    saved = _saved_macs()
    a, b = "layer1.0.conv1", "layer4.0.conv1"
    lam = 0.3 / (2 * (saved[a] - saved[b]) / 1e6)

    def scripted(name, width, _):
        low = {a: [0.3, 0.35], b: [0.2, 0.25]}.get(name)
        return None if low is None else low + [1.0] * (width - 2)

    widths = {}
    for penalty in (lam, 0.0):
        pruner = get_pruner("molchanov", rate=0.001, input_size=SIZE, flops_penalty=penalty, channels_per_step=2,
                            finetune_steps=0)
        pruner.criterion = _Scripted(scripted)
        rounds = _cuts(monkeypatch, pruner, _model(), PruneContext())
        assert len(rounds) == 1
        widths[penalty] = {g.name: g.channels for g in pruner.groups}
    assert (widths[lam][a], widths[lam][b]) == (62, 512)
    assert (widths[0.0][a], widths[0.0][b]) == (64, 510)


def test_2019_momentum_averages_the_scores_of_kept_channels(monkeypatch):
    # Round 1: s1 = (0, 2, 3, ..., 64) removes channel 0. Round 2 scores the 63 left s2 = (10, ..., 10, 0); the
    # ranking is 0.9 s1[1:] + 0.1 s2 (NVlabs: momentum 0.9): original channel 1 scores 0.9 x 2 + 1 = 2.8 and goes,
    # while s2 alone would remove original channel 63 (0.9 x 64 + 0 = 57.6 with momentum).
    s1 = torch.arange(1.0, 65.0)
    s1[0] = 0
    s2 = torch.full((63,), 10.0)
    s2[-1] = 0

    def scripted(name, width, call):
        return None if name != "layer1.0.conv1" else (s1 if call == 1 else s2 if call == 2 else [1.0] * width)

    ranked, real = [], iterative.lowest_channels
    monkeypatch.setattr(iterative, "lowest_channels", lambda scores, cut: ranked.append(dict(scores)) or
                        real(scores, cut))
    weight, survivors = _model().layer1[0].conv1.weight.detach(), {}
    for options in ({}, {"momentum": 0.0}):  # {}: the 2019 default
        pruner = get_pruner("molchanov", variant=2019, layer_rates={"layer1.0.conv1": 2 / 64}, channels_per_step=1,
                            finetune_steps=0, **options)
        pruner.criterion = _Scripted(scripted)
        ranked.clear()
        survivors[len(options)] = pruner.prune(_model(), PruneContext()).layer1[0].conv1.weight.detach()
        if not options:
            torch.testing.assert_close(ranked[1]["layer1.0.conv1"], (0.9 * s1[1:] + 0.1 * s2).double())
    assert torch.equal(survivors[0], weight[2:])  # original channels 0 and 1 removed
    assert torch.equal(survivors[1], weight[1:63])  # without momentum: 0 and 63


# ------------------------------------------------------------------------- entropy


def test_entropy_equals_numpy_histogram_entropy():
    g = torch.Generator().manual_seed(3)
    values = torch.randn(50, 6, generator=g, dtype=torch.float64)
    values[:, 2] = 0.7  # constant over images
    values[:10, 4] = values[:, 4].max()  # ties at the top edge fall in the last bin
    got = channel_entropy(values, bins=20)
    for j in range(6):
        column = values[:, j].numpy()
        counts, _ = np.histogram(column, bins=20, range=(column.min(), column.max()))
        p = counts[counts > 0] / len(column)
        assert got[j].item() == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
    assert got[2].item() == 0.0


def test_entropy_scores_match_brute_force_on_a_network():
    model = _model()
    batches = _batches(2)
    pooled = []

    def record(module, inputs, output):  # what conv2 reads: ReLU of bn1's output, pooled per image
        pooled.append(np.maximum(output.detach().numpy(), 0).mean(axis=(2, 3)))

    handle = model.layer1[0].bn1.register_forward_hook(record)
    with torch.no_grad():
        for images, _ in batches:
            model(images)
    handle.remove()
    values = np.concatenate(pooled)  # (16, 64)
    expected = []
    for column in values.T:
        counts, _ = np.histogram(column, bins=5, range=(column.min(), column.max()))
        p = counts[counts > 0] / len(column)
        expected.append(-(p * np.log(p)).sum())
    pruner = get_pruner("entropy", rate=0.5, bins=5, input_size=SIZE)
    pruner.setup(model)
    scores = score_groups(pruner.criterion, model, pruner.groups, _context(batches))
    np.testing.assert_allclose(scores["layer1.0.conv1"].numpy(), expected, atol=1e-9)


def test_entropy_removes_a_channel_constant_across_images():
    model = _model()
    with torch.no_grad():
        model.layer1[0].bn1.bias.fill_(0.5)  # no other channel is all-negative (constant 0 after ReLU)
        model.layer1[0].conv1.weight[7] = 0
        model.layer1[0].bn1.weight[7] = 0
        model.layer1[0].bn1.bias[7] = 0.5  # after ReLU: 0.5 for every image and position
    pruner = get_pruner("entropy", layer_rates={"layer1.0.conv1": 1 / 64}, input_size=SIZE)
    pruner.setup(model)
    scores = score_groups(pruner.criterion, model, pruner.groups, _context(_batches()))["layer1.0.conv1"]
    assert scores[7].item() == 0.0 and torch.all(scores[torch.arange(64) != 7] > 0)
    bias = model.layer1[0].bn1.bias.detach().clone()
    pruned = pruner.prune(model, _context(_batches()))
    assert pruned.layer1[0].conv1.out_channels == 63
    assert torch.equal(pruned.layer1[0].bn1.bias, bias[torch.arange(64) != 7])  # exactly channel 7 went


def test_entropy_prunes_layer_by_layer_to_keep_counts():
    model = _model()
    steps = []
    pruner = get_pruner("entropy", rate=0.5, input_size=SIZE, finetune_steps=3)
    pruned = pruner.prune(model, _context(_batches(), finetune=lambda net, n: steps.append(n) or net))
    assert {g.name: g.channels for g in pruner.groups} == pruner.keep_counts
    assert pruner.schedule.units_pruned == 8 and steps == [3] * 7  # after each group but the last
    assert pruned.layer4[1].conv1.out_channels == 256


def test_entropy_scores_each_group_on_the_network_as_pruned_and_fine_tuned_so_far():
    model = _model()
    original = model.layer1[1].conv1.weight.detach().clone()
    pruner = get_pruner("entropy", layer_rates={"layer1.0.conv1": 0.5, "layer1.1.conv1": 0.5}, input_size=SIZE,
                        finetune_steps=1)
    pruner.setup(model)
    up_front = score_groups(pruner.criterion, model, pruner.groups, _context(_batches()))["layer1.1.conv1"]
    assert keep_top(up_front, 32) != list(range(32, 64))  # scoring once, up front, would keep other channels

    def finetune(net, steps):  # after layer1.0: leaves layer1.1's channels 0-31 constant over images (entropy 0)
        with torch.no_grad():
            net.layer1[1].conv1.weight[:32] = 0
            net.layer1[1].bn1.weight[:32] = 0
            net.layer1[1].bn1.bias.fill_(0.5)
        return net

    pruned = pruner.prune(model, _context(_batches(), finetune=finetune))
    assert torch.equal(pruned.layer1[1].conv1.weight, original[32:])  # exactly the channels left varying


def test_entropy_refuses_residual_streams():
    with pytest.raises(ValueError, match="'entropy' supports scope internal, not 'all'.*residual-stream"):
        get_pruner("entropy", rate=0.3, scope="all")
    with pytest.raises(ConfigError, match="prune.options.bins"):
        get_pruner("entropy", rate=0.3, bins=1)


# ------------------------------------------------------------------------- both, end to end


@pytest.mark.parametrize("method, options", [("molchanov", {"channels_per_step": 600}),
                                             ("molchanov", {"variant": 2019, "channels_per_step": 600}),
                                             ("entropy", {})])
def test_prunes_resnet18_end_to_end_and_round_trips(tmp_path, method, options):
    model = _model()
    before = _params(model)
    small = reid_prune.prune(model, method, rate=0.3, input_size=SIZE, data=_batches(), num_batches=1, **options)
    assert _params(small) < before
    x = torch.randn(2, 3, *SIZE)
    path = save_checkpoint(tmp_path / "pruned.pt", small)
    loaded = load_model(path)
    assert _params(loaded) == _params(small)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small.eval()(x))
