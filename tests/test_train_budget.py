"""An equal training budget (``prune.train_steps``, the bench's ``train_steps``): every optimiser step after the
source counts, the method's own included, and the fine-tuning takes exactly the rest."""

from __future__ import annotations

import math

import pytest

from conftest import SMALL_BENCH, TINY_BENCH, TINY_RUN
from reid_prune.backbone import build_model
from reid_prune.bench import load_bench, plan_bench
from reid_prune.bench.configs import stretched
from reid_prune.bench.plan import check_plan
from reid_prune.data import Sample
from reid_prune.data.datasets import ReIDDataset
from reid_prune.config import ConfigError, load_config
from reid_prune.engine import Trainer
from reid_prune.engine.ledger import BudgetExceededError, TrainingLedger
from reid_prune.evaluation.complexity import complexity
from reid_prune.jobs.prune import prune_checkpoint
from reid_prune.jobs.wiring import make_train_loader, prepare_dataset
from reid_prune.pruners import Pruner


def _config(*extra: str):
    return load_config(None, TINY_RUN + ["train.warmup_epochs=0", "eval.latency=false", *extra])


def test_a_step_budget_trains_exactly_that_many_steps_on_a_schedule_of_that_length(tiny_run, cache_at, monkeypatch):
    cache_at(tiny_run / "cache")
    cfg = _config("train.lr=0.1")  # 12 training identities // P=4: 3 steps per epoch
    loader = make_train_loader(cfg, prepare_dataset(cfg.data, verbose=False))
    assert len(loader) == 3
    lrs = []

    def step(self, images, pids):  # the schedule, not the arithmetic of a step, is under test
        lrs.append(self.optimizer.param_groups[0]["lr"])
        self.global_step += 1
        return {"loss": 0.0}

    monkeypatch.setattr(Trainer, "train_step", step)
    from reid_prune.jobs.prune import finetune_schedule

    trainer = Trainer(cfg, build_model("resnet18", num_classes=12), {}, loader, train=finetune_schedule(cfg, 1),
                      progress=False, steps=7)
    trainer.fit()
    # 7 steps = epochs of 3, 3 and 1; cosine from lr / 10 = 0.01 over 7/3 epochs: step i at progress i/3 epochs,
    # lr = 0.01 * (1 + cos(pi * (i/3) / (7/3))) / 2 = 0.005 * (1 + cos(pi * i / 7)).
    assert trainer.train_cfg.epochs == 3
    assert lrs == pytest.approx([0.005 * (1 + math.cos(math.pi * i / 7)) for i in range(7)])


def _prune(tiny_run, tmp_path, *extra: str) -> dict:
    cfg = _config("prune.rate=0.5", "prune.scope=internal", *extra)
    return prune_checkpoint(cfg, tiny_run / "run" / "best.pt", output=tmp_path / "pruned", progress=False)


def test_a_one_shot_method_fine_tunes_the_whole_budget_at_its_pruned_width(tiny_run, cache_at, tmp_path):
    cache_at(tiny_run / "cache")
    report = _prune(tiny_run, tmp_path, "prune.method=haoli", "prune.train_steps=5")
    assert (report["train_steps"], report["method_train_steps"], report["finetune_steps"]) == (5, 0, 5)
    ratio = report["finetuned"]["macs"] / report["before"]["macs"]
    assert ratio < 0.9
    assert report["mac_weighted_steps"] == pytest.approx(5 * ratio, abs=0.01)


def test_a_layerwise_method_s_own_steps_count_and_the_fine_tuning_takes_the_rest(tiny_run, cache_at, tmp_path):
    cache_at(tiny_run / "cache")
    # Entropy prunes ResNet-18's 8 internal groups (conv1 of each block) one by one, training 2 steps after each
    # but the last: 7 x 2 = 14 steps of its own; 20 - 14 = 6 steps of fine-tuning.
    report = _prune(tiny_run, tmp_path, "prune.method=entropy", "prune.options.finetune_steps=2",
                    "prune.train_steps=20")
    assert report["finetune_steps_between_units"] == 14
    assert (report["train_steps"], report["method_train_steps"], report["finetune_steps"]) == (20, 14, 6)
    ratio = report["finetuned"]["macs"] / report["before"]["macs"]
    own = report["mac_weighted_steps"] - 6 * ratio  # each own step at the width of its moment: between the two
    assert 14 * ratio < own < 14


def test_a_method_that_prunes_while_training_spends_the_budget_at_full_width(tiny_run, cache_at, tmp_path):
    cache_at(tiny_run / "cache")
    # PSFP zeroes filters while it trains; they are still computed until the end, so every step counts 1.0.
    report = _prune(tiny_run, tmp_path, "prune.method=psfp", "prune.train_steps=4")
    assert (report["train_steps"], report["method_train_steps"], report["finetune_steps"]) == (4, 4, 0)
    assert report["mac_weighted_steps"] == 4.0


def test_a_budget_below_the_planned_own_training_is_refused_before_any_data_is_read(tiny_run, cache_at, tmp_path,
                                                                                    monkeypatch):
    cache_at(tiny_run / "cache")

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the budget was checked")

    monkeypatch.setattr("reid_prune.jobs.prune.prepare_dataset", no_data)
    with pytest.raises(ValueError, match="prune.train_steps=10: entropy plans 14 optimiser steps of its own"):
        _prune(tiny_run, tmp_path, "prune.method=entropy", "prune.options.finetune_steps=2", "prune.train_steps=10")
    assert not (tmp_path / "pruned" / "pruned.pt").exists()


def test_the_ledger_refuses_steps_past_its_limit_and_records_nothing_then():
    model = build_model("resnet18")
    ledger = TrainingLedger(complexity(model, (64, 32))["macs"], (64, 32), limit=10)
    ledger.spend(model, 6)
    with pytest.raises(BudgetExceededError, match="prune.train_steps=10: the method trains 12 optimiser steps"):
        ledger.spend(model, 6)
    assert (ledger.steps, ledger.mac_weighted_steps, ledger.left) == (6, 6.0, 4)


def test_both_lengths_at_once_are_refused():
    with pytest.raises(ConfigError, match="prune.train_steps"):
        _config("prune.train_steps=10", "prune.finetune_epochs=2")


@pytest.mark.parametrize(("method", "options", "expected"), [
    ("haoli", {}, 0),
    ("entropy", {"finetune_steps": 30}, 7 * 30),  # 8 internal groups, steps after all but the last
    ("thinet", {"finetune_steps": 10}, 7 * 10),  # ThiNet fine-tunes per residual block: 8 blocks
    ("molchanov", {"rounds": 10, "finetune_steps": 30}, 9 * 30),  # the planned rounds, steps between them
    # channels_per_step: the channels to cut over it. ResNet-18's internal groups (8 x 64..512 channels) at a
    # uniform prune rate of 0.5 lose 32+32+64+64+128+128+256+256 = 960 channels: 960 / 100 -> 10 rounds.
    ("molchanov", {"channels_per_step": 100, "finetune_steps": 1}, 9),
    ("psfp", {}, None),  # its training is the fine-tuning
])
def test_planned_own_steps_by_hand(method, options, expected):
    pruner = Pruner(method, rate=0.5, scope="internal", input_size=(64, 32), **options)
    assert pruner.planned_training_steps(build_model("resnet18")) == expected


def test_the_bench_refuses_a_budget_smaller_than_a_method_s_own_training():
    bench = load_bench(TINY_BENCH, SMALL_BENCH + [
        "finetune_epochs=0", "train_steps=100", "methods=[{name: entropy, options: {finetune_steps: 30}}]"])
    with pytest.raises(ConfigError, match=r"bench key train_steps: .*210 optimiser steps.*train_steps=100"):
        check_plan(plan_bench(bench), dry_run=True)


def test_bench_cells_carry_the_budget_and_scratch_adds_it_on_top():
    bench = load_bench(TINY_BENCH, SMALL_BENCH + [
        "finetune_epochs=0", "train_steps=8", "dense=true", "scratch={widths: HaoLi}"])
    plan = plan_bench(bench)
    trained = {c.kind: c for c in plan.cells}
    for kind in ("prune", "dense"):
        p = trained[kind].cfg.prune
        assert (p.train_steps, p.finetune_epochs) == (8, 0)
    scratch = trained["scratch"]
    assert scratch.extra_steps == 8 and scratch.cfg.train.epochs == trained["train"].cfg.train.epochs
    # Another budget is another scratch cell; no budget leaves the keys as they were (a "later" key).
    other = plan_bench(load_bench(TINY_BENCH, SMALL_BENCH + [
        "finetune_epochs=0", "train_steps=12", "dense=true", "scratch={widths: HaoLi}"]))
    assert {c.kind: c for c in other.cells}["scratch"].key != scratch.key
    assert {c.kind: c for c in other.cells}["train"].key == trained["train"].key


def test_scratch_trains_the_budget_in_whole_epochs_or_is_refused_naming_the_nearest():
    cfg = _config("data.p=2", "train.epochs=10", "train.milestones=[6, 8]")
    # 6 identities of 2 images, P=2: 3 steps per epoch.
    dataset = ReIDDataset("toy", [Sample(f"{p}_{i}.jpg", p, i) for p in range(6) for i in range(2)], [], [])
    longer = stretched(cfg, 6, dataset, "scratch")
    assert (longer.train.epochs, longer.train.milestones) == (12, [7, 10])  # 6 * 12/10 = 7.2, 8 * 1.2 = 9.6
    assert cfg.train.epochs == 10  # a copy
    with pytest.raises(ConfigError, match="bench key train_steps: scratch trains whole epochs of 3 steps.*use 6 or 9"):
        stretched(cfg, 7, dataset, "scratch")
