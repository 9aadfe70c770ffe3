"""Distillation from the unpruned model while the pruned one trains (``prune.distill``, ``--distill``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN
from reid_prune.backbone import build_model
from reid_prune.checkpoint import save_checkpoint
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.distillation import Distiller
from reid_prune.engine import Trainer
from reid_prune.jobs.prune import finetune_schedule, prune_checkpoint
from reid_prune.jobs.wiring import make_train_loader, prepare_dataset

REPO = Path(__file__).resolve().parents[1]


def _config(*extra: str):
    return load_config(None, TINY_RUN + ["train.warmup_epochs=0", "eval.latency=false", *extra])


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_every_step_after_the_source_distils_from_a_frozen_teacher(tiny_run, cache_at, tmp_path, monkeypatch):
    cache_at(tiny_run / "cache")
    calls, teachers = [], []
    original = Distiller.loss

    def spy(self, images, feats, logits):
        teachers.append((self.teacher.training, _state(self.teacher)))
        total, parts = original(self, images, feats, logits)
        calls.append(parts)
        return total, parts

    monkeypatch.setattr(Distiller, "loss", spy)
    # Entropy trains 2 steps after each of ResNet-18's 8 internal groups but the last (14 of its own),
    # then fine-tunes the 6 left of 20: the between-round steps distil too.
    cfg = _config("prune.method=entropy", "prune.rate=0.5", "prune.scope=internal", "prune.options.finetune_steps=2",
                  "prune.train_steps=20", "prune.distill={}")
    report = prune_checkpoint(cfg, tiny_run / "run" / "best.pt", output=tmp_path / "pruned", progress=False)
    assert report["train_steps"] == 20 and len(calls) == 20
    assert all(set(parts) == {"distill_feature", "distill_relational"} for parts in calls)
    assert report["distill"]["feature"] == 1.0 and report["distill"]["teacher"] is None
    # The teacher stayed in eval mode and never changed, while the student was cut and trained.
    assert not any(training for training, _ in teachers)
    first = teachers[0][1]
    assert all(torch.equal(first[k], state[k]) for _, state in teachers for k in first)
    source = torch.load(tiny_run / "run" / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], source[k]) for k in first)  # the unpruned model as loaded


def _loader_and_cfg(tiny_run, cache_at, *extra):
    cache_at(tiny_run / "cache")
    cfg = _config("prune.distill={}", *extra)
    return cfg, make_train_loader(cfg, prepare_dataset(cfg.data, verbose=False))


def test_resume_continues_the_same_distilled_run(tiny_run, cache_at, tmp_path, monkeypatch):
    # A teacher of another feature size: the feature loss trains a projection, which the checkpoint must keep.
    cfg, loader = _loader_and_cfg(tiny_run, cache_at, "train.max_batches=2")
    teacher = build_model("resnet18", embedding_dim=32, num_classes=12)
    schedule = finetune_schedule(cfg, 2)

    def trainer(out):
        torch.manual_seed(0)
        model = build_model("resnet18", num_classes=12)
        distiller = Distiller(teacher, cfg.prune.distill, (cfg.data.height, cfg.data.width))
        return Trainer(cfg, model, model.build_config, loader, output_dir=out, train=schedule, progress=False,
                       distiller=distiller)

    whole = trainer(tmp_path / "whole")
    assert whole.distiller.projection is not None and whole.distiller.projection.weight.shape == (32, 512)
    whole.fit()

    save = Trainer._save

    def stop_after_first_epoch(self, record):
        save(self, record)
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "parts").fit()
    monkeypatch.setattr(Trainer, "_save", save)
    resumed = trainer(tmp_path / "parts")
    resumed.resume()
    resumed.fit()
    for name, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert torch.equal(whole.distiller.projection.weight, resumed.distiller.projection.weight)
    # The projection trained (it is not its initial value), and the teacher did not.
    fresh = trainer(None).distiller.projection.weight
    assert not torch.equal(fresh, whole.distiller.projection.weight)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in whole.distiller.teacher.state_dict().items())


def _prune_args(tiny_run, tmp_path, *extra: str) -> list[str]:
    sets = [f"--set={o}" for o in TINY_RUN + ["train.warmup_epochs=0", "train.max_batches=2", "eval.latency=false"]]
    return ["prune", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", *sets,
            "--checkpoint", str(tiny_run / "run" / "best.pt"), "--method", "haoli", "--rate", "0.3",
            "--output", str(tmp_path / "pruned"), *extra]


def test_prune_distill_from_the_command_line(tiny_run, cache_at, tmp_path, capsys):
    cache_at(tiny_run / "cache")
    assert main(_prune_args(tiny_run, tmp_path, "--train-steps", "2", "--distill")) == 0
    assert "distilled from the unpruned model (feature x1, relational x1)" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--train-steps", "2", "--teacher", "missing.pt"], "prune.distill.teacher: checkpoint 'missing.pt' does not exist"),
    (["--distill"], "this job trains nothing after the cut; add --finetune-epochs N or --train-steps N"),
    (["--train-steps", "2", "--distill", "--set=prune.distill.feature=0", "--set=prune.distill.relational=0"],
     "every loss weight (feature, relational, logits) is 0"),
])
def test_distillation_that_cannot_work_is_refused_before_any_work(tiny_run, cache_at, tmp_path, capsys, extra,
                                                                   message):
    cache_at(tiny_run / "cache")
    assert main(_prune_args(tiny_run, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "pruned").exists() or not any((tmp_path / "pruned").iterdir())


def test_logits_need_a_teacher_over_the_same_identities(tiny_run, cache_at, tmp_path, capsys):
    cache_at(tiny_run / "cache")
    other = build_model("resnet18", num_classes=5)
    save_checkpoint(tmp_path / "teacher.pt", other)
    assert main(_prune_args(tiny_run, tmp_path, "--train-steps", "2", "--teacher", str(tmp_path / "teacher.pt"),
                            "--set=prune.distill.logits=1.0")) == 2
    err = capsys.readouterr().err
    assert "classifies 5 identities but the pruned model trains on 12" in err and "prune.distill.logits=0" in err
    assert not (tmp_path / "pruned" / "pruned.pt").exists()


def test_a_bench_method_distils_through_set_and_gets_cells_of_its_own():
    from conftest import SMALL_BENCH, TINY_BENCH
    from reid_prune.bench import load_bench, plan_bench

    plain = plan_bench(load_bench(TINY_BENCH, SMALL_BENCH)).cells
    both = plan_bench(load_bench(TINY_BENCH, SMALL_BENCH + [
        "methods=[haoli, {name: haoli, label: HaoLi + KD, set: {prune.distill: {relational: 0.5}}}]"])).cells
    by_label = {c.label: c for c in both if c.kind == "prune"}
    assert by_label["HaoLi"].cfg.prune.distill is None
    assert by_label["HaoLi + KD"].cfg.prune.distill.relational == 0.5
    # Distillation off leaves every key as it was; on, the cell is another one.
    assert {c.key for c in plain} <= {c.key for c in both}
    assert by_label["HaoLi + KD"].key not in {c.key for c in plain}


def test_the_prune_report_scores_the_finished_model_on_the_validation_split(tiny_run, cache_at, tmp_path):
    """Choosing distillation weights (or any setting) must read the validation split: report.json gives it."""
    from reid_prune.checkpoint import load_model
    from reid_prune.engine import evaluate_with_config
    from reid_prune.jobs.wiring import decision_loaders, make_eval_loaders
    from reid_prune.runtime import Runtime

    cache_at(tiny_run / "cache")
    cfg = _config("prune.method=haoli", "prune.rate=0.3", "prune.train_steps=2", "train.max_batches=2",
                  "data.val_ids=4")
    with pytest.warns(UserWarning, match="new classifier"):
        report = prune_checkpoint(cfg, tiny_run / "run" / "best.pt", output=tmp_path / "pruned", progress=False)
    dataset = prepare_dataset(cfg.data, verbose=False)
    model = load_model(tmp_path / "pruned" / "pruned.pt")
    compute = Runtime.from_config(cfg.train).compute
    val = evaluate_with_config(model, cfg, *decision_loaders(cfg, dataset), compute=compute, progress=False)
    test = evaluate_with_config(model, cfg, *make_eval_loaders(cfg, dataset), compute=compute, progress=False)
    assert report["validation"]["mAP"] == pytest.approx(val["mAP"], abs=1e-6)
    assert report["finetuned"]["mAP"] == pytest.approx(test["mAP"], abs=1e-6)
    assert val["mAP"] != test["mAP"]  # two splits, two numbers: the comparison can fail
