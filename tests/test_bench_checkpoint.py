"""A bench whose source model is a checkpoint (``baselines: [{checkpoint: PATH}]``), adopted instead of trained.

The source is a ``best.pt`` of a tiny ``reid_prune.jobs.train.train`` run (or a reid-strong-baseline model
brought in by ``reid-prune import``); the bench file sits in its own folder and names it by a path relative
to that folder. The run trains nothing (``train`` is replaced by a function that fails), scores the file as
``evaluate_checkpoint`` does, and prunes and fine-tunes exactly that file. The refusals stop the command with
exit 2 and one line before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import reid_prune
from reid_prune.backbone import build_model
from reid_prune.bench import cells as bench_cells, load_bench, plan_bench, run_bench
from reid_prune.bench import plan as bench_plan
from reid_prune.bench.plan import check_plan
from reid_prune.checkpoint import load_model, save_checkpoint
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.jobs.evaluate import evaluate_checkpoint
from reid_prune.jobs.train import train

from conftest import use_cache
from test_interop import bot_state

BENCH = """\
name: adopted
input_size: [64, 32]
base:
  data: {dataset: synthetic, p: 4, k: 2, workers: 0, eval_batch_size: 64, transforms: {random_erasing: 0.0}}
  model: {last_stride: 1, neck: bnneck, pretrained: none}
  loss: {triplet: batch_hard, margin: 0.3, id_weight: 1.0}
  train: {optimizer: adam, lr: 1.0e-3, warmup_epochs: 0, max_batches: 2, device: cpu}
  eval: {latency: false}
datasets:
  synthetic_a: {synthetic: {ids: 8, test_ids: 4, images_per_camera: 2, seed: 0}}
baselines: [{checkpoint: model/best.pt}]
prune_arch: resnet18
methods: [haoli]
budgets: [0.5]
finetune_epochs: 1
dense: true
"""
# The run config of the source model: the bench's data, model and input size.
SOURCE = ["data.dataset=synthetic", "data.synthetic.ids=8", "data.synthetic.test_ids=4",
          "data.synthetic.images_per_camera=2", "data.synthetic.seed=0", "data.height=64", "data.width=32",
          "data.p=4", "data.k=2", "data.workers=0", "data.transforms.random_erasing=0.0", "model.arch=resnet18",
          "model.last_stride=1", "model.neck=bnneck", "model.pretrained=none", "loss.id_weight=1.0",
          "train.device=cpu", "train.epochs=1", "train.warmup_epochs=0", "train.max_batches=2", "eval.latency=false"]
LABEL = "ResNet18 (best.pt)"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(best.pt of a tiny training, the cache holding its generated data): trained once for the module."""
    root = tmp_path_factory.mktemp("source")
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, root / "cache")
        train(load_config(None, SOURCE), output=root / "run", progress=False)
    return root / "run" / "best.pt", root / "cache"


def bench_folder(tmp_path: Path, checkpoint: Path | None = None) -> Path:
    """The bench file in FOLDER/bench/adopted.yaml, with the source at FOLDER/bench/model/best.pt; returns the file."""
    folder = tmp_path / "bench"
    (folder / "model").mkdir(parents=True)
    if checkpoint is not None:
        shutil.copy(checkpoint, folder / "model" / "best.pt")
    (folder / "adopted.yaml").write_text(BENCH)
    return folder / "adopted.yaml"


def untrained(path: Path, seed: int = 0, **config) -> Path:
    """A whole ResNet-18 checkpoint like the bench's (64x32, last stride 1, BNNeck), not trained: for the plan."""
    torch.manual_seed(seed)
    model = build_model("resnet18", last_stride=1, neck="bnneck", num_classes=8, **config)
    save_checkpoint(path, model, config=load_config(None, SOURCE).to_dict())
    return path


@pytest.fixture
def checkpoint_bench(tmp_path, monkeypatch):
    """A bench file whose source is an untrained checkpoint; monkeypatch points the cache at tmp_path."""
    use_cache(monkeypatch, tmp_path / "cache")
    file = bench_folder(tmp_path)
    untrained(file.parent / "model" / "best.pt")
    return file


def no_training(*args, **kwargs):
    raise AssertionError("the bench trained a model")


@pytest.mark.slow
def test_the_checkpoint_is_scored_pruned_and_fine_tuned_and_nothing_trains(trained, tmp_path, monkeypatch):
    best, cache = trained
    use_cache(monkeypatch, cache)
    file = bench_folder(tmp_path, best)
    original = file.parent / "model" / "best.pt"
    monkeypatch.setattr(bench_cells, "train", no_training)
    out = tmp_path / "out"
    summary = run_bench(load_bench(file), out, progress=False, log=lambda line: None)
    rows = {row["label"]: row for row in summary["rows"]}
    assert set(rows) == {LABEL, "HaoLi", "Dense (fine-tuned)"}

    plan = plan_bench(load_bench(file))
    (source,) = [c for c in plan.cells if c.kind == "train"]
    expected = evaluate_checkpoint(source.cfg, original, progress=False)
    assert rows[LABEL]["mAP"] == round(expected["mAP"], 2) and rows[LABEL]["scored_by"] == "run"
    copy = out / "cells" / source.key / "run" / "last.pt"
    assert sha256(copy) == sha256(original)  # adopted as it is: the file a trained baseline leaves
    params = sum(p.numel() for p in load_model(original).parameters())
    for label, folder in (("HaoLi", rows["HaoLi"]["cell"]), ("Dense (fine-tuned)", rows["Dense (fine-tuned)"]["cell"])):
        report = json.loads((out / "cells" / folder / "report.json").read_text())
        assert report["checkpoint"] == str(copy), label
        assert report["before"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9), label
        assert report["before"]["params"] == params, label
    assert rows["HaoLi"]["macs_kept"] == pytest.approx(0.5, abs=0.02)
    assert "adopted, not trained here" in (out / "results.md").read_text()
    # The written bench.yaml (the checkpoint's absolute path, its arch and label) plans the same cells.
    assert [c.key for c in plan_bench(load_bench(out / "bench.yaml")).cells] == [c.key for c in plan.cells]
    # A rerun reuses every cell: nothing is copied, pruned or scored again.
    monkeypatch.setattr(bench_cells, "prune_checkpoint", no_training)
    monkeypatch.setattr(bench_cells, "evaluate_checkpoint", no_training)
    again = run_bench(load_bench(file), out, progress=False, log=lambda line: None)
    assert [r["mAP"] for r in again["rows"]] == [r["mAP"] for r in summary["rows"]]


def test_the_key_holds_the_files_path_and_sha256_and_one_source_serves_every_seed(checkpoint_bench):
    path = checkpoint_bench.parent / "model" / "best.pt"

    def plan(*overrides):
        return plan_bench(load_bench(checkpoint_bench, ["seeds=[0, 1]", *overrides]))

    first = plan()
    (source,) = [c for c in first.cells if c.kind == "train"]
    assert source.source.path == path and source.source.sha256 == sha256(path)
    assert [r.cell for r in first.rows if r.cell.kind == "train"] == [source]  # one row, not one per seed
    pruned = [c for c in first.cells if c.kind == "prune"]
    assert sorted(c.cfg.train.seed for c in pruned) == [0, 1] and all(c.parent is source for c in pruned)
    assert len({c.key for c in pruned}) == 2
    # The same file at the same path: the same cells, whatever else the bench trains for how long.
    assert [c.key for c in plan("epochs=7").cells] == [c.key for c in first.cells]
    # Other weights at the same path: another source, so other cells below it.
    stat = path.stat()
    untrained(path, seed=1)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewrite within the same clock tick
    other = plan()
    assert sha256(path) != source.source.sha256
    assert not {c.key for c in other.cells} & {c.key for c in first.cells}
    # The same bytes at another path: another cell too (the path is in the key).
    shutil.copy(path, path.parent / "copy.pt")
    moved = plan("baselines=[{checkpoint: model/copy.pt}]")
    assert moved.cells[0].source.sha256 == other.cells[0].source.sha256
    assert moved.cells[0].key != other.cells[0].key


def pruned_checkpoint(path: Path) -> Path:
    """A checkpoint of a ResNet-18 with half of its internal channels cut (no 'prune' entry: only its widths tell)."""
    model = build_model("resnet18", last_stride=1, neck="bnneck", num_classes=8)
    save_checkpoint(path, reid_prune.prune(model, "haoli", rate=0.5), config=load_config(None, SOURCE).to_dict())
    return path


@pytest.mark.parametrize("setup, overrides, message", [
    (None, ["baselines=[{checkpoint: model/missing.pt}]"],
     r"bench key baselines\[0\].checkpoint: \S+/bench/model/missing.pt does not exist \(a relative path is read "
     r"from the bench file's folder\); give the best.pt of a reid-prune training, or convert another tool's model "
     r"with reid-prune import"),
    (lambda p: torch.save({"state_dict": build_model("resnet18").state_dict()}, p), [],
     r"bench key baselines\[0\].checkpoint: \S+/best.pt is not a reid-prune checkpoint \(no reid-prune format "
     r"entry\); .* reid-prune import --from torchreid\|fastreid\|bot"),
    (lambda p: p.write_bytes(b"not a torch file"), [],
     r"bench key baselines\[0\].checkpoint: \S+/best.pt is not a reid-prune checkpoint \(unreadable\)"),
    (pruned_checkpoint, [], r"bench key baselines\[0\].checkpoint: \S+/best.pt holds a pruned resnet18 .*give the "
                            "checkpoint it was pruned from"),
    (untrained, ["prune_arch=resnet50"],
     r"bench key prune_arch: resnet50 must also be a baseline .*; baselines are resnet18 \(resnet18: the checkpoint "
     r"\S+/bench/model/best.pt\): set prune_arch"),
    (untrained, ["baselines=[{checkpoint: model/best.pt, arch: resnet50}]"],
     r"bench key baselines\[0\].arch: resnet50, but the checkpoint \S+/best.pt holds a resnet18: leave arch out"),
    (untrained, ["baselines=[{checkpoint: model/best.pt, epochs: 3}]"],
     r"bench key baselines\[0\].epochs: the checkpoint \S+/best.pt is adopted, not trained here: remove epochs"),
    (untrained, ["base.model.last_stride=2"],
     r"bench key baselines\[0\].checkpoint: \S+/best.pt holds a resnet18 with last_stride 1, but the bench's "
     r"model.last_stride is 2: put the file's values in the bench file \(--set base.model.last_stride=1\)$"),
    (untrained, ["baselines=[{checkpoint: model/best.pt, set: {model.neck: none}, label: R18}]"],
     r"with neck bnneck, but the bench's model.neck is none: .*\(--set baselines\[0\].set.model.neck=bnneck\)$"),
    (untrained, ["input_size=[128, 64]"],
     r"bench key baselines\[0\].checkpoint: \S+/best.pt was trained at 64x32 pixels, but the bench's cells run at "
     r"128x64: set input_size: \[64, 32\]"),
    (untrained, ["scratch={widths: HaoLi}"],
     r"bench key scratch: the control trains resnet18 .* the source is the checkpoint \S+/best.pt, not trained "
     r"here: remove scratch \(scratch: null\)"),
    (untrained, ["seeds=[0, 1]", "finetune_seeds=[0]"],
     r"bench key seeds: the resnet18 source is one checkpoint .* give seeds or finetune_seeds, not both"),
])
def test_a_checkpoint_that_cannot_serve_is_refused_in_one_line_before_anything_is_written(
        tmp_path, monkeypatch, capsys, setup, overrides, message):
    use_cache(monkeypatch, tmp_path / "cache")
    file = bench_folder(tmp_path)
    if setup is not None:
        setup(file.parent / "model" / "best.pt")
    out = tmp_path / "out"
    flags = [a for o in overrides for a in ("--set", o)]
    for dry in ([], ["--dry-run"]):
        assert main(["bench", "--config", str(file), "--output", str(out), "--quiet", *flags, *dry]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert re.search(message, line), line
    assert not out.exists() and not (tmp_path / "cache").exists()  # no output, no generated data


def test_an_imported_model_is_a_source_with_its_stem(checkpoint_bench, tmp_path, monkeypatch, capsys):
    """A reid-strong-baseline ResNet-18 (its stem has no ReLU before the max-pool; 9 identities) imported,
    then planned: the budget is checked on that network, its classifier as stored."""
    foreign = tmp_path / "resnet18_model_120.pth"
    torch.save(bot_state("resnet18", classes=9), foreign)
    model = checkpoint_bench.parent / "model" / "best.pt"
    model.unlink()  # the fixture's trained source: import refuses to replace an existing file
    assert main(["import", "--from", "bot", str(foreign), "--output", str(model)]) == 0
    capsys.readouterr()
    built = []
    real = bench_plan.build_model

    def build(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_plan, "build_model", build)
    plan = plan_bench(load_bench(checkpoint_bench))
    check_plan(plan, dry_run=True)
    (source,) = [c for c in plan.cells if c.kind == "train"]
    assert source.source.model_config["stem"] == "no_relu" and source.source.size is None  # import records no size
    assert {"stem": "no_relu", "num_classes": 9} in [{k: kw.get(k) for k in ("stem", "num_classes")} for kw in built]
    assert main(["bench", "--config", str(checkpoint_bench), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    assert f"adopt the resnet18 checkpoint {model} (not trained here)" in capsys.readouterr().out
