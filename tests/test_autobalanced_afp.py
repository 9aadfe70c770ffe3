"""AutoBalanced and AFP+PRC: the balanced regulariser, the tolerance controller, and real training runs."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import reid_prune.pruners.afp_prc  # noqa: F401  (registers afp_prc)
import reid_prune.pruners.autobalanced  # noqa: F401  (registers autobalanced)
from reid_prune import build_model
from reid_prune.checkpoint import load_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from reid_prune.config import load_config
from reid_prune.data import PKSampler
from reid_prune.engine.hooks import TrainerHook
from reid_prune.engine.trainer import Trainer
from reid_prune.pruners import get_pruner
from reid_prune.pruners.autobalanced import balanced_factors, channel_norms, channel_parameters


def _model():
    torch.manual_seed(0)
    return build_model("resnet18")


def _fake_trainer(model, epochs, maps=()):
    scripted = iter(maps)
    trainer = SimpleNamespace(model=model, train_cfg=SimpleNamespace(epochs=epochs), query_loader="stub",
                              rebuilds=0, evaluate=lambda: {"mAP": next(scripted)})

    def rebuild_optimizer():
        trainer.rebuilds += 1

    trainer.rebuild_optimizer = rebuild_optimizer
    return trainer


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    flat_o, flat_p = original.flatten(1), pruned.flatten(1)
    return [int(torch.nonzero((flat_o == row).all(dim=1))[0]) for row in flat_p]


def test_balanced_factors_hand_case():
    sq = torch.tensor([1.0, 4.0, 9.0, 16.0])
    theta = balanced_factors(sq, torch.tensor([True, True, False, False]), 0.5)
    # unimportant: +0.5; important: -0.5 * (1 + 4) / (9 + 16) = -0.1
    torch.testing.assert_close(theta, torch.tensor([0.5, 0.5, -0.1, -0.1]))
    assert float((theta * sq).sum()) == pytest.approx(0.0, abs=1e-6)


def test_autobalanced_regulariser_sums_to_zero_and_shrinks_unimportant_filters():
    model = _model()
    strength, lr = 0.05, 0.5
    pruner = get_pruner("autobalanced", rate=0.5, rounds=1, strength=strength)
    pruner.on_train_start(_fake_trainer(model, epochs=2))
    norms = {g.name: channel_norms(model, g, 2).detach() for g in pruner.groups}
    for g in pruner.groups:  # the unimportant set: the lowest-norm half, by brute force
        order = sorted(range(g.channels), key=lambda c: float(norms[g.name][c]))
        assert sorted(pruner.unimportant[g.name]) == sorted(order[: g.channels - pruner.keep_counts[g.name]])
        mask = torch.zeros(g.channels, dtype=torch.bool)
        mask[pruner.unimportant[g.name]] = True
        theta = balanced_factors(norms[g.name], mask, strength)
        assert torch.all(theta[mask] > 0) and torch.all(theta[~mask] < 0)
        assert float((theta * norms[g.name]).sum()) == pytest.approx(0.0, abs=1e-4)
    loss = pruner.regularization_loss(model)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-3)  # the terms balance

    # One plain SGD step on the regulariser alone scales every parameter of channel j by
    # (1 - 2 lr theta_j): unimportant channels shrink, important ones grow.
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for g in pruner.groups:
        mask = torch.zeros(g.channels, dtype=torch.bool)
        mask[pruner.unimportant[g.name]] = True
        theta = balanced_factors(norms[g.name], mask, strength)
        expected = norms[g.name] * (1 - 2 * lr * theta) ** 2
        torch.testing.assert_close(channel_norms(model, g, 2).detach(), expected, rtol=1e-4, atol=1e-6)
    for _ in range(4):
        optimizer.zero_grad()
        pruner.regularization_loss(model).backward()
        optimizer.step()
    for g in pruner.groups:
        after = channel_norms(model, g, 2).detach()
        mask = torch.zeros(g.channels, dtype=torch.bool)
        mask[pruner.unimportant[g.name]] = True
        assert torch.all(after[mask] < 0.7 * norms[g.name][mask])
        assert torch.all(after[~mask] >= norms[g.name][~mask])


def test_autobalanced_rounds_cut_the_weakened_channels_abreast():
    pruner = get_pruner("autobalanced", rate=0.5, rounds=3)
    assert [pruner.round_end_epoch(r, 12) for r in (1, 2, 3)] == [2, 5, 8]  # 3 rounds + 3 retraining epochs
    assert [pruner.round_end_epoch(r, 3) for r in (1, 2, 3)] == [0, 1, 2]
    assert [pruner.round_end_epoch(r, 2) for r in (1, 2, 3)] == [0, 1, 1]

    model = _model()
    trainer = _fake_trainer(model, epochs=3)
    pruner = get_pruner("autobalanced", rate=0.5, rounds=2)
    pruner.on_train_start(trainer)
    original = model.get_submodule("layer2.0.conv1").weight.detach().clone()
    weakened = pruner.unimportant["layer2.0.conv1"]
    assert len(weakened) == 32  # round 1 cuts half of the 64 channels to go
    pruner.on_epoch_end(trainer, 0)  # round 1 ends: every group loses its first share
    assert trainer.rebuilds == 1
    conv = model.get_submodule("layer2.0.conv1")
    assert conv.out_channels == 96 and model.get_submodule("layer2.0.conv2").in_channels == 96
    assert _kept_rows(original, conv.weight) == sorted(set(range(128)) - set(weakened))
    assert all(g.channels == pruner.keep_after(g.name, 1) for g in pruner.groups)
    state = json.loads(json.dumps(pruner.state_dict()))  # plain types only
    pruner.on_epoch_end(trainer, 1)
    assert [g.channels for g in pruner.groups] == [32, 32, 64, 64, 128, 128, 256, 256]
    pruner.on_epoch_end(trainer, 2)  # the retraining part: nothing more
    assert trainer.rebuilds == 2 and pruner.regularization_loss(model) is None
    assert pruner.finalize(model) is model and model.get_submodule("layer2.0.conv1").out_channels == 64
    assert pruner.summary()["reached_rate"] == pytest.approx(0.5)

    resumed = get_pruner("autobalanced", rate=0.5, rounds=2)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state and resumed.rounds_done == 1


def test_autobalanced_finalize_completes_the_cut_when_training_stopped_early():
    model = _model()
    pruner = get_pruner("autobalanced", rate=0.25, rounds=3)
    pruner.on_train_start(_fake_trainer(model, epochs=8))
    pruner.finalize(model)
    assert model.get_submodule("layer1.0.conv1").out_channels == 48
    assert model.get_submodule("layer4.1.conv1").out_channels == 384


def _shrink_unimportant(model, pruner, skip=()):
    """Stand-in for the sparsity term's effect: make the pushed channels tiny."""
    with torch.no_grad():
        for g in pruner.groups:
            if g.name in pruner.unimportant and g.name not in skip:
                for param in channel_parameters(model, g):
                    param[pruner.unimportant[g.name]] *= 1e-3


def test_afp_prc_raises_pressure_within_tolerance_and_backs_off_beyond_it():
    model = _model()
    reg = 1e-3
    # baseline 50, then one scripted validation mAP per epoch; tolerance 2 points
    maps = [50.0, 49.5, 49.0, 47.0, 47.5, 48.5, 47.9, 48.0]
    trainer = _fake_trainer(model, epochs=9, maps=maps)
    pruner = get_pruner("afp_prc", rate=0.5, tolerance=2.0, reg=reg, push_fraction=0.1, threshold=0.05,
                        threshold_step=0.05, patience=2)
    pruner.on_train_start(trainer)
    assert pruner.baseline == 50.0 and pruner.lam == reg
    assert len(pruner.unimportant["layer3.0.conv1"]) == 26  # ceil(0.1 * 256) lowest-L1 channels

    # the sparsity term is lambda * (L1 norm of the pushed channels), by brute force
    brute = sum(sum(p[c].abs().sum() for p in channel_parameters(model, g) for c in pruner.unimportant[g.name])
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
    rounds = pruner.rounds
    assert [r["action"] for r in rounds] == ["raise", "raise", "back off", "fine-tune", "resume", "back off", "stop"]
    # threshold: +0.05 per round within tolerance, 0 while backing off, resumed at half the failed one
    assert [r["threshold"] for r in rounds] == pytest.approx([0.05, 0.1, 0.15, 0, 0, 0.075, 0])
    # lambda follows the margin left: reg * (2 - drop) / 2
    assert [r["lambda"] for r in rounds] == pytest.approx([reg, 0.75 * reg, 0.5 * reg, 0, 0, 0.25 * reg, 0])
    assert all((r["channels_cut"] > 0) == (r["threshold"] > 0) for r in rounds)
    assert widths[7] == widths[8] == widths[6]  # stopped: no more cuts, no more evaluations
    assert pruner.done and pruner.regularization_loss(model) is None
    summary = pruner.summary()
    start = sum(pruner.start_channels.values())
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
    trainer = _fake_trainer(model, epochs=3, maps=[50.0] * 4)
    pruner = get_pruner("afp_prc", rate=0.1, push_fraction=0.5)
    pruner.on_train_start(trainer)
    for epoch in range(3):
        _shrink_unimportant(model, pruner)
        pruner.on_epoch_end(trainer, epoch)
    assert model.get_submodule("layer1.0.conv1").out_channels == 58  # 64 - floor(0.1 * 64)
    assert pruner.done and pruner.rounds[0]["action"] == "raise, cap reached"

    no_eval = _fake_trainer(_model(), epochs=1)
    no_eval.query_loader = None
    with pytest.raises(ValueError, match="query and gallery loaders"):
        get_pruner("afp_prc", rate=0.5).on_train_start(no_eval)
    with pytest.raises(ValueError, match="during training"):
        get_pruner("afp_prc", rate=0.5).finalize(_model())
    with pytest.raises(ValueError, match="option tolerance"):
        get_pruner("afp_prc", rate=0.5, tolerance=-1)


@pytest.mark.parametrize("method", ["autobalanced", "afp_prc"])
def test_scopes_and_one_call_refusal(method):
    with pytest.raises(ValueError, match="supports scope internal or all"):
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
