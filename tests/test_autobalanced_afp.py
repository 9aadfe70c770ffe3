"""AutoBalanced and AFP+PRC: the balanced regulariser, the tolerance controller, and real training runs."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from reid_prune import build_model
from reid_prune.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from reid_prune.config import ConfigError, load_config
from reid_prune.data import PKSampler
from reid_prune.hooks import TrainerHook
from reid_prune.engine.trainer import Trainer
from reid_prune.pruners import get_pruner
from reid_prune.pruners.criteria.magnitude import channel_norms, channel_parameters
from reid_prune.pruners.schedules.autobalanced import balanced_factors, graded_factors


def _model():
    torch.manual_seed(0)
    return build_model("resnet18")


def _loop(model, epochs, maps=()):
    """A stand-in for the trainer's TrainingLoop view, with scripted validation mAPs."""
    scripted = iter(maps)
    loop = SimpleNamespace(model=model, epochs=epochs, can_evaluate=True, rebuilds=0,
                           evaluate=lambda: {"mAP": next(scripted)})

    def rebuild_optimizer():
        loop.rebuilds += 1

    loop.rebuild_optimizer = rebuild_optimizer
    return loop


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    flat_o, flat_p = original.flatten(1), pruned.flatten(1)
    return [int(torch.nonzero((flat_o == row).all(dim=1))[0]) for row in flat_p]


def test_graded_factors_hand_case():
    # Threshold = the 2nd largest norm, 1: 1 + ln(1/0.1) = 3.303, 1 + ln(2) = 1.693, -1 - ln(1) = -1, -1 - ln(2).
    factors = graded_factors(torch.tensor([0.1, 0.5, 1.0, 2.0]), keep=2)
    torch.testing.assert_close(factors, torch.tensor([3.3026, 1.6931, -1.0, -1.6931], dtype=torch.float64),
                               atol=1e-4, rtol=0)


def test_balanced_factors_hand_case():
    sq = torch.tensor([1.0, 4.0, 9.0, 16.0])
    graded = torch.tensor([2.0, 1.0, -1.0, -3.0])
    theta = balanced_factors(sq, graded, 0.5)
    # pushed: 0.5 x (2, 1); S+ = 2 x 1 + 1 x 4 = 6, S- = -1 x 9 - 3 x 16 = -57; tau = -0.5 x 6 / -57 = 3 / 57.
    expected = torch.tensor([1.0, 0.5, -3 / 57, -9 / 57], dtype=torch.float64)
    torch.testing.assert_close(theta, expected)
    assert float((theta * sq.double()).sum()) == pytest.approx(0.0, abs=1e-12)


def test_autobalanced_regulariser_sums_to_zero_and_shrinks_the_channels_to_prune():
    model = _model()
    strength, lr = 0.05, 0.5
    pruner = get_pruner("autobalanced", rate=0.5, rounds=1, strength=strength)
    pruner.on_train_start(_loop(model, epochs=2))
    sq = {g.name: channel_norms(model, g, 2).detach() for g in pruner.groups}
    l1 = {g.name: channel_norms(model, g, 1).detach() for g in pruner.groups}
    theta = {g.name: balanced_factors(sq[g.name], graded_factors(l1[g.name], pruner.keep_counts[g.name]), strength)
             for g in pruner.groups}
    for g in pruner.groups:  # positive exactly on the lowest-L1 channels to cut, by brute force
        order = sorted(range(g.channels), key=lambda c: float(l1[g.name][c]))
        pushed = set(order[: g.channels - pruner.keep_counts[g.name]])
        assert {c for c in range(g.channels) if theta[g.name][c] > 0} == pushed
    loss = pruner.regularization_loss(model)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-3)  # the terms balance

    # One plain SGD step on the regulariser alone scales every parameter of channel j by (1 - 2 lr theta_j).
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for g in pruner.groups:
        expected = (sq[g.name] * (1 - 2 * lr * theta[g.name]) ** 2).float()
        torch.testing.assert_close(channel_norms(model, g, 2).detach(), expected, rtol=1e-4, atol=1e-6)
        assert torch.all(channel_norms(model, g, 2).detach()[theta[g.name] > 0] < sq[g.name][theta[g.name] > 0])


def test_autobalanced_rounds_cut_the_lowest_channels_abreast():
    schedule = get_pruner("autobalanced", rate=0.5, rounds=3).schedule
    assert [schedule.round_end_epoch(r, 12) for r in (1, 2, 3)] == [2, 5, 8]  # 3 rounds + 3 retraining epochs
    assert [schedule.round_end_epoch(r, 3) for r in (1, 2, 3)] == [0, 1, 2]
    assert [schedule.round_end_epoch(r, 2) for r in (1, 2, 3)] == [0, 1, 1]

    model = _model()
    loop = _loop(model, epochs=3)
    pruner = get_pruner("autobalanced", rate=0.5, rounds=2)
    pruner.on_train_start(loop)
    # By hand: filter L1 a (every weight a / 576), BN scale b and shift -d, so a channel's L1 is a + b + d.
    conv, bn = model.layer2[0].conv1, model.layer2[0].bn1
    a, b, d = torch.rand(3, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        conv.weight.copy_((a / 576).reshape(-1, 1, 1, 1).expand_as(conv.weight))
        bn.weight.copy_(b)
        bn.bias.copy_(-d)
    original = conv.weight.detach().clone()

    def top(values):
        return sorted(torch.argsort(values, descending=True)[:96].tolist())

    assert top(a + b + d) not in (top(a), top(a + b), top(a + d))  # each part changes the choice
    pruner.on_epoch_end(loop, 0)  # round 1 ends: every group loses its first share, the lowest L1 first
    assert loop.rebuilds == 1
    conv = model.get_submodule("layer2.0.conv1")
    assert conv.out_channels == 96 and model.get_submodule("layer2.0.conv2").in_channels == 96
    assert _kept_rows(original, conv.weight) == top(a + b + d)
    assert all(g.channels == pruner.schedule.keep_after(pruner, g.name, 1) for g in pruner.groups)
    state = json.loads(json.dumps(pruner.state_dict()))  # plain types only
    pruner.on_epoch_end(loop, 1)
    assert [g.channels for g in pruner.groups] == [32, 32, 64, 64, 128, 128, 256, 256]
    pruner.on_epoch_end(loop, 2)  # the retraining part: nothing more
    assert loop.rebuilds == 2 and pruner.regularization_loss(model) is None
    assert pruner.finalize(model) is model and model.get_submodule("layer2.0.conv1").out_channels == 64
    assert pruner.summary()["reached_rate"] == pytest.approx(0.5)

    resumed = get_pruner("autobalanced", rate=0.5, rounds=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state and resumed.schedule.rounds_done == 1


def test_autobalanced_rounds_keep_the_floor_of_the_share_due():
    # Round r of 3 keeps floor(C (1 - r/3 x cut/C)) = C - ceil(r cut / 3); rate 0.5 cuts half of each group.
    # C = 64: 64 - ceil(32/3) = 53, 64 - ceil(64/3) = 42 (round() would keep 43); C = 128: 106 (not 107), 85.
    model = _model()
    loop = _loop(model, epochs=4)  # rounds end after epochs 0, 1, 2
    pruner = get_pruner("autobalanced", rate=0.5, rounds=3)
    pruner.on_train_start(loop)
    widths = []
    for epoch in range(3):
        pruner.on_epoch_end(loop, epoch)
        widths.append([g.channels for g in pruner.groups])
    assert widths == [[53, 53, 106, 106, 213, 213, 426, 426], [42, 42, 85, 85, 170, 170, 341, 341],
                      [32, 32, 64, 64, 128, 128, 256, 256]]


def test_autobalanced_finalize_completes_the_cut_when_training_stopped_early():
    model = _model()
    pruner = get_pruner("autobalanced", rate=0.25, rounds=3)
    pruner.on_train_start(_loop(model, epochs=8))
    pruner.finalize(model)
    assert model.get_submodule("layer1.0.conv1").out_channels == 48
    assert model.get_submodule("layer4.1.conv1").out_channels == 384


def _shrink_unimportant(model, pruner, skip=()):
    """Stand-in for the sparsity term's effect: make the pushed channels tiny."""
    unimportant = pruner.schedule.unimportant
    with torch.no_grad():
        for g in pruner.groups:
            if g.name in unimportant and g.name not in skip:
                for param in channel_parameters(model, g):
                    param[unimportant[g.name]] *= 1e-3


def test_afp_prc_raises_pressure_within_tolerance_and_backs_off_beyond_it():
    model = _model()
    reg = 1e-3
    # baseline 50, then one scripted validation mAP per epoch; tolerance 2 points
    maps = [50.0, 49.5, 49.0, 47.0, 47.5, 48.5, 47.9, 48.0]
    trainer = _loop(model, epochs=9, maps=maps)
    pruner = get_pruner("afp_prc", rate=0.5, tolerance=2.0, reg=reg, push_fraction=0.1, threshold=0.05,
                        threshold_step=0.05, patience=2)
    pruner.on_train_start(trainer)
    afp = pruner.schedule
    assert afp.baseline == 50.0 and afp.lam == reg
    assert len(afp.unimportant["layer3.0.conv1"]) == 26  # ceil(0.1 * 256) lowest-L1 channels

    # the sparsity term is lambda * (L1 norm of the pushed channels), by brute force
    brute = sum(sum(p[c].abs().sum() for p in channel_parameters(model, g) for c in afp.unimportant[g.name])
                for g in pruner.groups)
    torch.testing.assert_close(pruner.regularization_loss(model), reg * brute)

    widths = []
    for epoch in range(9):
        _shrink_unimportant(model, pruner, skip=("layer1.0.conv1",) if epoch == 0 else ())
        pruner.on_epoch_end(trainer, epoch)
        widths.append(sum(g.channels for g in pruner.groups))
        if epoch == 0:  # its pushed channels stayed over the threshold: not cut
            assert model.get_submodule("layer1.0.conv1").out_channels == 64
            assert model.get_submodule("layer3.0.conv1").out_channels == 230
    rounds = afp.rounds
    assert [r["action"] for r in rounds] == ["raise", "raise", "back off", "fine-tune", "resume", "back off", "stop"]
    # threshold: +0.05 per round within tolerance, 0 while backing off, resumed at half the failed one
    assert [r["threshold"] for r in rounds] == pytest.approx([0.05, 0.1, 0.15, 0, 0, 0.075, 0])
    # lambda follows the margin left: reg * (2 - drop) / 2
    assert [r["lambda"] for r in rounds] == pytest.approx([reg, 0.75 * reg, 0.5 * reg, 0, 0, 0.25 * reg, 0])
    assert all((r["channels_cut"] > 0) == (r["threshold"] > 0) for r in rounds)
    assert widths[7] == widths[8] == widths[6]  # stopped: no more cuts, no more evaluations
    assert afp.done and pruner.regularization_loss(model) is None
    summary = pruner.summary()
    start = sum(afp.start_channels.values())
    assert summary["reached_rate"] == pytest.approx(1 - widths[-1] / start, abs=1e-6)
    assert 0 < summary["reached_rate"] <= 0.5
    assert summary["rounds"][3]["drop"] == pytest.approx(2.5) and summary["baseline_mAP"] == 50.0
    assert trainer.rebuilds == 4
    state = json.loads(json.dumps(pruner.state_dict()))
    resumed = get_pruner("afp_prc", rate=0.5)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state


def test_afp_prc_respects_the_rate_cap_and_needs_validation_data():
    model = _model()
    trainer = _loop(model, epochs=3, maps=[50.0] * 4)
    pruner = get_pruner("afp_prc", rate=0.1, push_fraction=0.5)
    pruner.on_train_start(trainer)
    for epoch in range(3):
        _shrink_unimportant(model, pruner)
        pruner.on_epoch_end(trainer, epoch)
    assert model.get_submodule("layer1.0.conv1").out_channels == 57  # floor(64 x 0.9)
    assert pruner.schedule.done and pruner.schedule.rounds[0]["action"] == "raise, cap reached"

    no_eval = _loop(_model(), epochs=1)
    no_eval.can_evaluate = False
    with pytest.raises(ValueError, match="query and gallery loaders"):
        get_pruner("afp_prc", rate=0.5).on_train_start(no_eval)
    with pytest.raises(ValueError, match="during training"):
        get_pruner("afp_prc", rate=0.5).finalize(_model())
    with pytest.raises(ConfigError, match="prune.options.tolerance: must be > 0, got -1"):
        get_pruner("afp_prc", rate=0.5, tolerance=-1)


@pytest.mark.parametrize("method", ["autobalanced", "afp_prc"])
def test_scopes_and_one_call_refusal(method):
    with pytest.raises(ValueError, match="supports scope internal or all, not 'blocks'"):
        get_pruner(method, rate=0.3, scope="blocks")
    with pytest.raises(ValueError, match="prunes during training"):
        get_pruner(method, rate=0.3).prune(_model())


class _RandomImages(Dataset):
    """``(image (3, 64, 32), pid, camid, index)`` with fixed random pixels."""

    def __init__(self, pids, camid):
        generator = torch.Generator().manual_seed(len(pids) + camid)
        self.images = torch.randn(len(pids), 3, 64, 32, generator=generator)
        self.pids, self.camid = list(pids), camid

    def __len__(self):
        return len(self.pids)

    def __getitem__(self, i):
        return self.images[i], self.pids[i], self.camid, i


def _loaders():
    pids = [p for p in range(4) for _ in range(4)]
    train = DataLoader(_RandomImages(pids, 0), batch_sampler=PKSampler(pids, 4, 2, seed=0))
    query = DataLoader(_RandomImages([1, 2, 3, 4], 0), batch_size=8)
    gallery = DataLoader(_RandomImages([1, 2, 3, 4, 1, 2, 3, 4], 1), batch_size=8)
    return train, query, gallery


_RUNS = [
    ("autobalanced", {"rounds": 2, "strength": 0.05}),
    ("afp_prc", {"tolerance": 100.0, "reg": 0.01, "threshold": 1.0, "push_fraction": 0.25}),
]


def _trainer(method, options, **kwargs):
    cfg = load_config(None, ["train.device=cpu", "data.height=64", "data.width=32", "model.arch=resnet18",
                             "train.epochs=3", "train.max_batches=2", "train.warmup_epochs=0", "train.amp=false",
                             "train.optimizer=sgd", "train.lr=0.05", "train.eval_every=3"])
    model = kwargs.pop("model", None) or _model()
    pruner = get_pruner(method, rate=0.5, input_size=(64, 32), **options)
    train, query, gallery = _loaders()
    trainer = Trainer(cfg, model, model.build_config, train, query, gallery, hooks=[pruner], progress=False,
                      **kwargs)
    return trainer, pruner


@pytest.mark.parametrize("method,options", _RUNS)
def test_prunes_resnet18_during_real_training_and_round_trips(method, options, tmp_path):
    trainer, pruner = _trainer(method, options)
    params_before = sum(p.numel() for p in trainer.model.parameters())
    trainer.fit()
    pruned = pruner.finalize(trainer.model)
    assert sum(p.numel() for p in pruned.parameters()) < params_before
    assert pruner.summary()["reached_rate"] > 0
    save_checkpoint(tmp_path / "pruned.pt", pruned)
    loaded = load_model(tmp_path / "pruned.pt")
    x = torch.randn(2, 3, 64, 32)
    torch.testing.assert_close(loaded(x), pruned.eval()(x))


class _Interrupted(Exception):
    pass


class _DieInEpoch(TrainerHook):
    def __init__(self, trainer, epoch):
        self.trainer, self.epoch = trainer, epoch

    def regularization_loss(self, model):
        if self.trainer.epoch == self.epoch:
            raise _Interrupted


@pytest.mark.slow
@pytest.mark.parametrize("method,options", _RUNS)
def test_resumed_run_matches_an_uninterrupted_one(method, options, tmp_path):
    trainer, pruner = _trainer(method, options)
    trainer.fit()
    expected = pruner.summary()

    trainer, pruner = _trainer(method, options, output_dir=tmp_path)
    trainer.hooks.append(_DieInEpoch(trainer, 2))  # after two epochs (and their cuts) were saved
    with pytest.raises(_Interrupted):
        trainer.fit()
    # a resumed prune run rebuilds the model at the widths saved in last.pt
    resumed, pruner = _trainer(method, options, output_dir=tmp_path,
                               model=model_from_checkpoint(read_checkpoint(tmp_path / "last.pt")))
    resumed.resume()
    assert resumed.start_epoch == 2
    resumed.fit()
    assert pruner.summary() == expected


def test_regularised_methods_plan_the_global_allocation_at_the_start():
    model = _model()
    pruner = get_pruner("autobalanced", target_macs=0.6, allocation="global", rounds=2, input_size=(64, 32))
    pruner.on_train_start(_loop(model, epochs=3))
    final = pruner.schedule.final_keep
    fractions = [final[name] / width for name, width in pruner.schedule.start_channels.items()]
    assert max(fractions) - min(fractions) > 0  # the ranking, not one rate, set the widths
    pruner.finalize(model)
    assert {g.name: g.channels for g in pruner.groups} == final
    afp = get_pruner("afp_prc", target_macs=0.6, allocation="global", input_size=(64, 32))
    afp.on_train_start(_loop(_model(), epochs=1, maps=[50.0]))
    assert afp.schedule.floor and all(afp.schedule.floor[g.name] <= g.channels for g in afp.groups)
