"""What a cached bench cell must prove before it is reused: its key, its files' SHA-256, its data's fingerprint.

A tiny bench (ResNet-18 trained on a generated Market-layout folder, pruned by HaoLi and Random)
is run once per module; each test works on a copy of its cells, changes what a user could
change on disk (the dataset, a model file, a result.json), reruns the bench and compares each
row with an evaluation of the model on the data there now. Also: latency budgets refused after
training leave no cell folder, and the plan checks budgets on the network the cell checks.
"""

import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from reid_prune.bench import cells as bench_cells, load_bench, plan_bench, run_bench
from reid_prune.bench import plan as bench_plan, run as bench_run
from reid_prune.bench.trust import data_fingerprint, file_sha256
from reid_prune.checkpoint import model_from_checkpoint, read_checkpoint
from reid_prune.cli import main
from reid_prune.data import generate_synthetic
from reid_prune.jobs.evaluate import evaluate_checkpoint
from reid_prune.pruners.base import Pruner

from conftest import REPO, use_cache

TINY_FILE = REPO / "configs" / "bench" / "synthetic_tiny.yaml"


def _generate(root: Path, seed: int) -> None:
    generate_synthetic(root, num_ids=8, num_test_ids=4, images_per_camera=2, height=64, width=32, seed=seed)


def _overrides(root: Path) -> list[str]:
    return ["base.data.p=4", "base.data.k=2", "base.train.max_batches=2", "base.train.device=cpu",
            "base.eval.latency=false", "epochs=1", "finetune_epochs=1", "baselines=[resnet18]", "prune_arch=resnet18",
            "methods=[haoli, random]", "budgets=[0.5]", "cross_domain=[]", "compare=[mine]",
            f"datasets={{mine: {{dataset: market_layout, root: '{root}'}}}}"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny bench: its data root, a pristine copy of the data, its output and its overrides."""
    base = tmp_path_factory.mktemp("trust")
    root, pristine, out = base / "data", base / "pristine", base / "out"
    _generate(root, seed=0)
    shutil.copytree(root, pristine)
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, base / "cache")
        run_bench(load_bench(TINY_FILE, _overrides(root)), out, progress=False, log=lambda line: None)
    return SimpleNamespace(root=root, pristine=pristine, out=out, overrides=_overrides(root), cache=base / "cache")


@pytest.fixture
def bench(finished, tmp_path, monkeypatch):
    """A copy of the finished bench's output; the data is put back as it was after the test."""
    use_cache(monkeypatch, finished.cache)
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    yield SimpleNamespace(out=out, cells=out / "cells", root=finished.root, overrides=finished.overrides,
                          plan=plan_bench(load_bench(TINY_FILE, finished.overrides)))
    shutil.rmtree(finished.root)
    shutil.copytree(finished.pristine, finished.root)


def folder(bench, prefix: str) -> Path:
    (path,) = bench.cells.glob(f"{prefix}-*")
    return path


def rerun(bench, monkeypatch):
    """Run the bench again, counting trainings (and whether each resumed) and prunings; returns (rows by cell
    label, calls, log lines)."""
    calls = {"train": [], "prune": 0}
    real_train, real_prune = bench_cells.train, bench_cells.prune_checkpoint

    def train(*args, **kwargs):
        calls["train"].append(kwargs["resume"])
        return real_train(*args, **kwargs)

    def prune(*args, **kwargs):
        calls["prune"] += 1
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(bench_cells, "train", train)
    monkeypatch.setattr(bench_cells, "prune_checkpoint", prune)
    lines = []
    summary = run_bench(load_bench(TINY_FILE, bench.overrides), bench.out, progress=False, log=lines.append)
    rows = {row["label"]: row for row in summary["rows"]}
    return rows, calls, "\n".join(lines)


def evaluated(bench, label: str) -> float:
    """mAP (rounded as results.csv) of the label's model, evaluated now on the data there now."""
    cell = next(c for c in bench.plan.cells if c.label == label)
    report = evaluate_checkpoint(cell.cfg, bench_cells.cell_checkpoint(cell, bench.cells / cell.key), progress=False)
    return round(report["mAP"], 2)


@pytest.mark.slow
def test_a_regenerated_dataset_retrains_every_cell_and_says_why(bench, monkeypatch):
    before, _, _ = rerun(bench, monkeypatch)
    shutil.rmtree(bench.root)
    _generate(bench.root, seed=1)  # other images at the same root: the cell keys do not change
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [False], "prune": 2}
    assert log.count("the training images of mine changed since it ran") == 3
    for label in ("ResNet18", "HaoLi", "Random"):
        assert rows[label]["mAP"] == evaluated(bench, label)
        assert rows[label]["scored_by"] == "run"


@pytest.mark.slow
def test_a_changed_test_split_rescores_without_training(bench, monkeypatch, tmp_path):
    before, _, _ = rerun(bench, monkeypatch)
    other = tmp_path / "other"
    _generate(other, seed=1)
    for split in ("query", "bounding_box_test"):  # new test images, the same training images
        shutil.rmtree(bench.root / split)
        shutil.copytree(other / split, bench.root / split)
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 0}
    assert log.count("re-scored the test images of mine changed since the cell ran") == 3
    assert any(rows[label]["mAP"] != before[label]["mAP"] for label in rows)  # the old numbers would be seen
    for label in ("ResNet18", "HaoLi", "Random"):
        assert rows[label]["mAP"] == evaluated(bench, label)
        assert rows[label]["scored_by"].startswith("eval-mine-")
    # The re-scorings are cached for this data and model: a third run evaluates nothing.
    monkeypatch.setattr("reid_prune.bench.scoring.evaluate_checkpoint", None)
    again, _, _ = rerun(bench, monkeypatch)
    assert {k: r["mAP"] for k, r in again.items()} == {k: r["mAP"] for k, r in rows.items()}


@pytest.mark.slow
def test_a_result_copied_from_another_cell_is_computed_again(bench, monkeypatch):
    haoli, random = folder(bench, "prune-mine-HaoLi"), folder(bench, "prune-mine-Random")
    shutil.copy(random / "result.json", haoli / "result.json")
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 1}
    assert f"{haoli}: not reused: its result.json is another cell's (key {random.name})" in log
    assert rows["HaoLi"]["mAP"] == evaluated(bench, "HaoLi")
    assert json.loads((haoli / "result.json").read_text())["key"] == haoli.name


@pytest.mark.slow
def test_missing_or_replaced_model_files_are_computed_again(bench, monkeypatch):
    haoli, random = folder(bench, "prune-mine-HaoLi"), folder(bench, "prune-mine-Random")
    shutil.copy(haoli / "pruned.pt", random / "pruned.pt")  # Random's row would show HaoLi's model
    (haoli / "pruned.pt").unlink()
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 2}
    assert f"{haoli}: not reused: pruned.pt is missing" in log
    assert f"{random}: not reused: pruned.pt does not match the SHA-256 in its result.json" in log
    for label in ("HaoLi", "Random"):
        assert rows[label]["mAP"] == evaluated(bench, label)


@pytest.mark.slow
def test_a_source_computed_again_makes_its_pruned_cells_stale(bench, monkeypatch):
    train = folder(bench, "train-mine-resnet18")
    shutil.copy(train / "run" / "best.pt", train / "run" / "last.pt")  # another file: its checksum differs
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [False], "prune": 2}
    assert "run/last.pt does not match the SHA-256" in log
    assert log.count(f"the file it started from, {train.name}/run/last.pt, changed since it ran") == 2
    for label in ("ResNet18", "HaoLi", "Random"):
        assert rows[label]["mAP"] == evaluated(bench, label)


@pytest.mark.slow
def test_cells_written_before_the_checks_are_adopted_once(bench, monkeypatch):
    for path in bench.cells.glob("*/result.json"):
        result = json.loads(path.read_text())
        del result["trust"]  # as the bench wrote it before the checks
        path.write_text(json.dumps(result))
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 0}
    assert log.count("finished before the bench checked cells' files and data; adopted") == 3
    haoli = folder(bench, "prune-mine-HaoLi")
    stamp = json.loads((haoli / "result.json").read_text())["trust"]
    assert stamp["adopted"] is True
    assert stamp["files"]["pruned.pt"] == hashlib.sha256((haoli / "pruned.pt").read_bytes()).hexdigest()
    _, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 0} and "finished before the bench checked" not in log  # once

    # Not adopted: a legacy cell whose model file is gone, or whose source was written after it finished.
    random = folder(bench, "prune-mine-Random")
    for cell in (haoli, random):
        result = json.loads((cell / "result.json").read_text())
        del result["trust"]
        (cell / "result.json").write_text(json.dumps(result))
    (haoli / "pruned.pt").unlink()
    last = folder(bench, "train-mine-resnet18") / "run" / "last.pt"
    later = (random / "result.json").stat().st_mtime + 60
    os.utime(last, (later, later))
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 2}
    assert f"{haoli}: not reused: pruned.pt is missing" in log
    assert f"{random}: not reused: the file it started from, {last.parent.parent.name}/run/last.pt, was written " \
           "after the cell finished" in log


@pytest.mark.slow
def test_cells_adopted_after_their_dataset_was_regenerated_show_the_data_there_now(bench, monkeypatch):
    """A cell from before the checks holds no fingerprint: adopted, it is scored on the test images there now."""
    for path in bench.cells.glob("*/result.json"):
        result = json.loads(path.read_text())
        del result["trust"]
        path.write_text(json.dumps(result))
    shutil.rmtree(bench.root)
    _generate(bench.root, seed=1)  # regenerated before the first run that checks
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 0}
    assert log.count("adopted from before the bench checked data") == 3
    for label in ("ResNet18", "HaoLi", "Random"):
        assert rows[label]["mAP"] == evaluated(bench, label)


@pytest.mark.slow
def test_a_result_that_is_a_folder_is_named_and_computed_again(bench, monkeypatch):
    random = folder(bench, "prune-mine-Random")
    (random / "result.json").unlink()
    (random / "result.json").mkdir()
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 1}
    assert f"{random}: not reused: {random / 'result.json'} is not a file" in log
    assert rows["Random"]["mAP"] == evaluated(bench, "Random")


@pytest.mark.slow
def test_a_truncated_result_is_named_and_computed_again(bench, monkeypatch):
    haoli = folder(bench, "prune-mine-HaoLi")
    text = (haoli / "result.json").read_text()
    (haoli / "result.json").write_text(text[: len(text) // 2])  # a kill during a non-atomic copy
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls == {"train": [], "prune": 1}
    assert f"{haoli}: not reused: {haoli / 'result.json'} is unreadable" in log
    assert rows["HaoLi"]["mAP"] == evaluated(bench, "HaoLi")


@pytest.mark.slow
def test_an_interrupted_training_on_changed_data_starts_again(bench, monkeypatch):
    train = folder(bench, "train-mine-resnet18")
    (train / "result.json").unlink()  # stopped after its last checkpoint: it would continue from last.pt
    shutil.rmtree(bench.root)
    _generate(bench.root, seed=1)
    rows, calls, log = rerun(bench, monkeypatch)
    assert calls["train"] == [False]  # not resumed from the model trained on the old images
    assert f"{train}: its interrupted training started on other training images than mine's now" in log
    assert rows["ResNet18"]["mAP"] == evaluated(bench, "ResNet18")


@pytest.mark.slow
def test_the_plan_checks_budgets_on_the_network_the_cell_checks(bench, monkeypatch):
    checked = []
    real = Pruner.check
    monkeypatch.setattr(Pruner, "check", lambda self, model: (checked.append(repr(model)), real(self, model))[1])
    bench_plan.check_plan(bench.plan)
    # The prune job checks the source model as it loads it (its classifier included): the latency table keys
    # its timings by this description, so the plan reads the timings the cell will.
    source = model_from_checkpoint(read_checkpoint(folder(bench, "train-mine-resnet18") / "run" / "last.pt"))
    assert repr(source.eval()) in checked


@pytest.mark.slow
def test_a_budget_refused_after_training_names_the_cell_and_leaves_no_folder(bench, monkeypatch):
    haoli = folder(bench, "prune-mine-HaoLi")
    shutil.rmtree(haoli)
    planned = []
    real_check_plan, real_check = bench_run.check_plan, Pruner.check

    def check_plan(*args, **kwargs):
        real_check_plan(*args, **kwargs)
        planned.append(True)

    def check(self, model):
        if planned:  # timed again when the cell prunes: the machine got slower
            raise ValueError("a latency budget of 0.600 cannot be met: with every selected group at its minimum the "
                             "model keeps 0.650 of its latency")
        return real_check(self, model)

    monkeypatch.setattr(bench_run, "check_plan", check_plan)
    monkeypatch.setattr(Pruner, "check", check)
    with pytest.raises(ValueError, match=f"bench cell {haoli.name} \\(prune resnet18 with HaoLi .*\\): a latency "
                                         "budget of 0.600 cannot be met"):
        run_bench(load_bench(TINY_FILE, bench.overrides), bench.out, progress=False, log=lambda line: None)
    assert not haoli.exists()
    assert (folder(bench, "train-mine-resnet18") / "result.json").is_file()  # finished cells are kept


def test_a_plan_with_latency_budgets_says_they_are_checked_again_when_cells_prune(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Pruner, "check", lambda self, model: None)  # no latency table timed here
    root = tmp_path / "data"
    _generate(root, seed=0)
    overrides = [o for o in _overrides(root) if not o.startswith("budgets=")] + ["budgets=[0.5, latency:0.7]"]
    args = ["bench", "--config", str(TINY_FILE), "--output", str(tmp_path / "out"), "--dry-run"]
    assert main(args + [a for o in overrides for a in ("--set", o)]) == 0
    out = capsys.readouterr().out
    assert f"latency budgets (latency:0.7) {bench_plan.LATENCY_LATER}" in out
    assert main(args + [a for o in _overrides(root) for a in ("--set", o)]) == 0
    assert "latency budgets" not in capsys.readouterr().out  # a MACs budget is checked now for good


def test_data_fingerprint_sees_names_and_sizes_not_copies(tmp_path):
    root = tmp_path / "data"
    _generate(root, seed=0)
    plan = plan_bench(load_bench(TINY_FILE, _overrides(root)))
    data = plan.cells[0].cfg.data
    first = data_fingerprint(data)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # new modification times, same files
    assert data_fingerprint(type(data)(**{**data.__dict__, "root": str(copy)})) == first
    image = sorted((root / "query").glob("*.png"))[0]
    image.write_bytes(image.read_bytes() + b"\0")  # one test image changed in size
    changed = data_fingerprint(data)
    assert changed["train"] == first["train"] and changed["test"] != first["test"]
    train = sorted((root / "bounding_box_train").glob("*.png"))[0]
    train.rename(train.with_name(train.name.replace("_c1", "_c2", 1)))  # a camera changed
    assert data_fingerprint(data)["train"] != first["train"]


def test_file_checksum_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"a" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"a" * 3_000_000).hexdigest()
    path.write_bytes(b"b" * 3_000_001)  # rewritten: its size and time changed, so it is read again
    assert file_sha256(path) == hashlib.sha256(b"b" * 3_000_001).hexdigest()


def test_a_truncated_cache_file_is_named_and_ignored(tmp_path):
    path = tmp_path / "latency.json"
    path.write_text('{"latency_ms": {"batch1": 3.')
    with pytest.warns(UserWarning, match=f"{path} is not valid JSON .*computed again"):
        assert bench_cells.read_json(path) is None


# Digests of every cell key of the shipped bench files (those that need no Torch-Pruning), taken before the
# checks of cached cells existed: a change here would recompute every cached cell of a running bench.
# Adding cells to a file changes its digest too: update it only after checking that the old keys are all
# still planned (cuhk03_protocol_cpu.yaml: its 69 keys of before 'HaoLi + KD' (issue 23) are).
KEY_DIGESTS = {
    "cuhk03_cpu.yaml": "29b89f96f5bf8cb7", "cuhk03_methods_cpu.yaml": "33f14b48d1044821",
    "cuhk03_protocol_cpu.yaml": "76c6d10d8e82559e", "market1501_gpu.yaml": "497e3017278a5244",
    "synthetic_tiny.yaml": "ee2ebef2b748481e",
}


def test_cell_keys_of_the_shipped_bench_files_are_unchanged():
    def anchored(cell):
        return cell is not None and (cell.kind == "anchor" or anchored(cell.parent) or anchored(cell.same_widths))

    digests = {}
    for path in sorted(glob.glob(str(REPO / "configs" / "bench" / "*.yaml"))):
        keys = [c.key for c in plan_bench(load_bench(path)).cells if not anchored(c)]
        digests[Path(path).name] = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    assert digests == KEY_DIGESTS


def test_a_latency_cache_copied_from_another_cell_is_timed_again(tmp_path, monkeypatch):
    from reid_prune.bench import latency as bench_latency
    from reid_prune.bench.cellspec import Cell

    size = SimpleNamespace(data=SimpleNamespace(height=8, width=4))
    source = Cell("train-S", "train", size, "d", "d", 0, "resnet50", "ResNet50")
    a = Cell("prune-A", "prune", size, "d", "d", 0, "resnet50", "HaoLi", budget="0.5", parent=source)
    b = Cell("prune-B", "prune", size, "d", "d", 0, "resnet50", "Random", budget="0.5", parent=source)
    for cell, content in ((source, b"S"), (a, b"A"), (b, b"B")):
        path = bench_cells.cell_checkpoint(cell, tmp_path / cell.key)
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    ms = {"train-S": 10.0, "prune-A": 4.0, "prune-B": 7.0}  # per image, whatever the round
    monkeypatch.setattr(bench_latency, "load_model", lambda path: path.read_bytes().decode())
    monkeypatch.setattr(bench_latency, "measure_latency", lambda model, size, *, batch_sizes, **kw: {
        f"batch{n}": ms[f"{'train' if model == 'S' else 'prune'}-{model}"] for n in batch_sizes})

    def measure():
        return bench_latency.cell_latencies([source, a, b], tmp_path, [1], 1, prune_arch="resnet50", rounds=3)

    assert measure()["prune-B"]["latency_ms_batch1"] == 7.0
    shutil.copy(tmp_path / "prune-A" / "latency.json", tmp_path / "prune-B" / "latency.json")
    again = measure()
    assert again["prune-B"]["latency_ms_batch1"] == 7.0 and again["prune-B"]["latency_ratio_batch1"] == 0.7
    assert again["prune-A"]["latency_ms_batch1"] == 4.0


@pytest.mark.slow
def test_the_dry_run_says_finished_only_for_cells_a_run_would_reuse(bench, capsys):
    haoli, random = folder(bench, "prune-mine-HaoLi"), folder(bench, "prune-mine-Random")
    shutil.copy(random / "result.json", haoli / "result.json")
    (random / "pruned.pt").unlink()
    assert main(["bench", "--config", str(TINY_FILE), "--output", str(bench.out), "--dry-run",
                 *[a for o in bench.overrides for a in ("--set", o)]]) == 0
    lines = capsys.readouterr().out.splitlines()
    (train_line,) = [line for line in lines if "train resnet18" in line]
    assert "] finished" in train_line
    haoli_line = next(line for line in lines if "with HaoLi" in line)
    random_line = next(line for line in lines if "with Random" in line)
    assert f"to rerun (its result.json is another cell's (key {random.name}))" in haoli_line
    assert "to rerun (pruned.pt is missing)" in random_line
    # Nothing was changed: the run, not the dry run, clears folders.
    assert (haoli / "result.json").is_file() and (random / "result.json").is_file()
