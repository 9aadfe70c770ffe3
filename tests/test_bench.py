"""Benchmark harness: end to end on tiny synthetic data, resuming after a stop, caching, cross-domain, file errors."""

import argparse
import csv
import importlib.util
import json
from pathlib import Path

import pytest

from reid_prune.bench import cells as bench_cells, keys as bench_keys, latency as bench_latency, scoring
from reid_prune import build_model, load_model
from reid_prune.bench import PLOT_NOTE, check_plan, load_bench, plan_bench, run_bench
from reid_prune.bench.configs import data_config
from reid_prune.cli import build_parser
from reid_prune.config import ConfigError, load_config
from reid_prune.data import generate_synthetic
from reid_prune.jobs.evaluate import evaluate_checkpoint
from reid_prune.evaluation import complexity
from reid_prune.precision import resolve_precision

from conftest import REPO, shared_data

CONFIGS = REPO / "configs" / "bench"
TINY_FILE = CONFIGS / "synthetic_tiny.yaml"
# synthetic_tiny.yaml shrunk to seconds: 2 batches of 4 x 2 images at 64x32, one epoch, ResNet50 and ResNet18.
# Dataset B has more training identities than A, so fine-tuning on B needs a new identity classifier.
TINY = [
    "base.data.p=4", "base.data.k=2", "base.train.max_batches=2", "base.train.device=cpu",
    "base.eval.latency_batch_sizes=[1]", "epochs=1", "finetune_epochs=1", "baselines=[resnet50, resnet18]",
    "datasets.synthetic_a.synthetic={ids: 8, test_ids: 4, images_per_camera: 2, seed: 0}",
    "datasets.synthetic_b.synthetic={ids: 12, test_ids: 4, images_per_camera: 2, seed: 1}",
]


# One generated dataset per test session, outside the user's cache.
pytestmark = pytest.mark.usefixtures("session_cache")


def _quiet(message: str) -> None:
    pass


def _parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.slow
def test_end_to_end_resume_cache_and_cross_domain(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    bench = load_bench(TINY_FILE, TINY)
    real_train, real_prune = bench_cells.train, bench_cells.prune_checkpoint
    calls = {"train": 0, "prune": 0}

    def stopped_at_fpgm(cfg, checkpoint, **kwargs):
        if cfg.prune.method == "fpgm":
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the fourth cell
        return real_prune(cfg, checkpoint, **kwargs)

    # 1. Interrupted run: the cells before the stop are kept, the partial table says what is missing.
    monkeypatch.setattr(bench_cells, "prune_checkpoint", stopped_at_fpgm)
    with pytest.raises(KeyboardInterrupt):
        run_bench(bench, out, progress=False, log=_quiet)
    finished = sorted(p.parent.name.split("-s0-")[0] for p in (out / "cells").glob("*/result.json"))
    assert finished == ["prune-synthetic_a-HaoLi-match-resnet18", "train-synthetic_a-resnet18",
                        "train-synthetic_a-resnet50"]
    assert "Partial results: 2 of 5 cells are not finished yet" in (out / "results.md").read_text()

    # 2. Rerun: trains nothing again, computes only the interrupted cell and the one after it.
    def counted_train(*args, **kwargs):
        calls["train"] += 1
        return real_train(*args, **kwargs)

    def counted_prune(*args, **kwargs):
        calls["prune"] += 1
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(bench_cells, "train", counted_train)
    monkeypatch.setattr(bench_cells, "prune_checkpoint", counted_prune)
    summary = run_bench(bench, out, progress=False, log=_quiet)
    assert calls == {"train": 0, "prune": 2}
    assert summary["complete"]

    rows = summary["rows"]
    assert [(r["scenario"], r["name"], r["finetune"], r["dataset"]) for r in rows] == [
        ("in_domain", "ResNet50", "", "synthetic_a"),
        ("in_domain", "ResNet18", "", "synthetic_a"),
        ("in_domain", "HaoLi", "synthetic_a", "synthetic_a"),
        ("in_domain", "FPGM", "synthetic_a", "synthetic_a"),
        ("cross_domain", "ResNet50", "", "synthetic_b"),
        ("cross_domain", "HaoLi", "synthetic_a", "synthetic_b"),
        ("cross_domain", "HaoLi", "synthetic_b", "synthetic_b"),
    ]
    for row in rows:
        assert 0 <= row["mAP"] <= 100 and 0 <= row["rank1"] <= 100
        assert row["latency_ms_batch1"] > 0 and row["wall_seconds"] > 0

    # Cost columns: the deployed network (no classifier) counted independently; the budget is ResNet-18's MACs.
    r50, r18 = (build_model(arch, last_stride=1, neck="bnneck") for arch in ("resnet50", "resnet18"))
    by_name = {r["name"]: r for r in rows if r["scenario"] == "in_domain"}
    assert by_name["ResNet18"]["params"] == sum(p.numel() for p in r18.parameters())
    assert by_name["ResNet50"]["macs"] == complexity(r50, (64, 32))["macs"]
    budget = complexity(r18, (64, 32))["macs"] / complexity(r50, (64, 32))["macs"]
    assert summary["budgets"]["match:resnet18"] == pytest.approx(budget, abs=1e-4)
    for name in ("HaoLi", "FPGM"):
        kept = by_name[name]["macs"] / by_name["ResNet50"]["macs"]
        assert kept == pytest.approx(budget, abs=0.02), name

    # Cross-domain: the model fine-tuned on A is the in-domain cell, scored on B; the one fine-tuned on B got a
    # classifier over B's 12 training identities.
    direct, on_a, on_b = rows[4:]
    assert direct["cell"] == by_name["ResNet50"]["cell"] and on_a["cell"] == by_name["HaoLi"]["cell"]
    cfg_b = plan_bench(bench).rows[5].cell.cfg
    cfg_b.data = data_config(bench, "synthetic_b")
    rescored = evaluate_checkpoint(cfg_b, out / "cells" / on_a["cell"] / "pruned.pt", progress=False)
    assert on_a["mAP"] == round(rescored["mAP"], 2)
    assert load_model(out / "cells" / on_b["cell"] / "pruned.pt").classifier.out_features == 12
    assert load_model(out / "cells" / on_a["cell"] / "pruned.pt").classifier.out_features == 8

    # Files: csv = json rows; the table in the survey's layout; the plot, or a note without matplotlib.
    with open(out / "results.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["cell"] for r in csv_rows] == [r["cell"] for r in rows]
    assert [float(r["mAP"]) for r in csv_rows] == [r["mAP"] for r in rows]
    assert json.loads((out / "results.json").read_text())["rows"] == rows
    md = (out / "results.md").read_text()
    # Latency names its setting: the base config's precision on the CPU (auto here) and channels-last.
    assert ("| Networks | MACs kept | Parameters (M) | GMACs | CPU latency / source (batch 1, 1 thread, "
            f"{resolve_precision('auto', 'cpu')}, channels_last) | prune s | n | mAP | R-1 | mINP |") in md
    assert "## In-domain: synthetic_a" in md
    for line in ("| ResNet50 |", "| ResNet18 |", "| HaoLi |", "| FPGM |",
                 "## Cross-domain: trained on synthetic_a, evaluated on synthetic_b",
                 "| HaoLi | pruned and fine-tuned on synthetic_b |"):
        assert line in md
    assert "Partial results" not in md
    if importlib.util.find_spec("matplotlib"):
        assert (out / "pareto.png").stat().st_size > 0 and (out / "widths.png").stat().st_size > 0
    else:
        assert not (out / "pareto.png").exists() and PLOT_NOTE in md

    # 3. Through the command: a finished bench trains, prunes, evaluates and times nothing, and writes the same rows.
    def forbidden(*args, **kwargs):
        raise AssertionError("a finished bench must not compute anything")

    for module, name in ((bench_cells, "train"), (bench_cells, "prune_checkpoint"),
                         (scoring, "evaluate_checkpoint"), (bench_latency, "measure_latency")):
        monkeypatch.setattr(module, name, forbidden)
    args = _parser().parse_args(["bench", "--config", str(TINY_FILE), "--output", str(out), "--quiet",
                              *[a for o in TINY for a in ("--set", o)]])
    assert args.func(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == rows and again["command"].startswith("reid-prune bench --config")


def test_bad_method_option_fails_before_any_training(tmp_path):
    bench = load_bench(TINY_FILE, TINY + ["methods=[{name: fpgm, options: {bogus: 1}}]", "cross_domain=[]"])
    with pytest.raises(ConfigError, match="method FPGM: config key prune.options.bogus is not a valid key"):
        run_bench(bench, tmp_path / "bench", progress=False, log=_quiet)
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize("override, message", [
    ("seed=1", "bench key seed is not a valid key; did you mean seeds?"),
    ("base.train.lrr=0.1", "config key base.train.lrr is not a valid key; did you mean base.train.lr?"),
    ("methods=[haoly]", r"bench key methods\[0\].name: unknown pruning method 'haoly'; did you mean haoli?"),
    ("budgets=[match:resnet99]", r"bench key budgets\[0\]: expected one of resnet18, resnet34, resnet50"),
    ("budgets=[1.5]", r"bench key budgets\[0\]: expected a fraction"),
    ("budgets=[latency:1.5]", r"bench key budgets\[0\]: expected .* or latency:F"),
    ("budgets=[latency:fast]", r"bench key budgets\[0\]: expected .* or latency:F"),
    ("baselines=[resnet18]", "bench key prune_arch: resnet50 must also be a baseline"),
    ("cross_domain=[{source: synthetic_a, target: market}]",
     r"bench key cross_domain\[0\].target: 'market' is not in datasets"),
    ("baselines=[resnet50, {arch: resnet18, set: {train.epoch: 3}}]",
     r"config key baselines\[1\].set.train.epoch is not a valid key; did you mean baselines\[1\].set.train.epochs?"),
    ("lr_steps=[0.9, 0.5]", "bench key lr_steps: expected increasing fractions"),
    ("anchors=[l2]", r"bench key anchors\[0\].importance: expected one of l1, taylor, got 'l2'"),
    ("scratch={widths: Haoli}", "bench key scratch.widths: 'Haoli' is not the label of a method in methods; "
                                "did you mean HaoLi?"),
    ("finetune_seeds=[0, -1]", r"bench key finetune_seeds\[1\]: must be >= 0, got -1"),
    ("budgets=[{value: 0.5, finetune_seeds: [1, 1]}]", r"bench key budgets\[0\].finetune_seeds: seeds must differ"),
    ("budgets=[{value: 0.5, seeds: [1]}]", r"bench key budgets\[0\].seeds is not a valid key; "
                                           r"valid keys: budgets\[0\].value, budgets\[0\].finetune_seeds"),
    ("input_size=[64]", r"bench key input_size: expected \[height, width\]"),
    ("methods[5].name=fpgm", r"--set 'methods\[5\].name=fpgm': methods\[5\] does not exist \(methods has 2 items\)"),
    ("base_config=missing.yaml", "bench key base_config: run config '.*missing.yaml' does not exist"),
    ("seeds=[]", "bench key seeds: give at least one seed"),
    ("finetune_seeds=[]", "bench key finetune_seeds: give at least one fine-tuning seed, or leave the key out"),
    ("budgets=[{value: 0.5, finetune_seeds: []}]", r"bench key budgets\[0\].finetune_seeds: give at least one"),
    ("budgets=[]", "bench key budgets: give at least one budget for the methods, anchors and scratch"),
    ("methods=[haoli, {name: fpgm, label: HaoLi}]",
     r"bench key methods: labels of methods, anchors and scratch .* must differ; repeated: HaoLi \("),
    # 'A/B' and 'A B' are different labels but the same folder name: one cell would serve both rows.
    ("methods=[{name: haoli, label: 'A/B'}, {name: haoli, label: 'A B'}]",
     "bench key methods: labels 'A/B' and 'A B' name the same cell folders"),
    ("methods=[{name: haoli, label: ' '}]", "bench key methods: label ' ' needs a letter or digit"),
])
def test_bench_file_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        plan_bench(load_bench(TINY_FILE, [override]))


def test_a_bench_of_baselines_alone_needs_no_budget():
    plan = plan_bench(load_bench(TINY_FILE, ["methods=[]", "anchors=[]", "scratch=null", "budgets=[]",
                                             "cross_domain=[]"]))
    assert plan.cells and {c.kind for c in plan.cells} == {"train"}


def test_set_indexes_lists_and_expands_short_items():
    bench = load_bench(TINY_FILE, ["methods[0].options.greedy=true", "methods[1].label=FPGM hard",
                                   "baselines[2].epochs=3"])
    assert [(m.name, m.label, m.options) for m in bench.methods] == [
        ("haoli", "HaoLi", {"greedy": True}), ("fpgm", "FPGM hard", {})]
    assert [(b.arch, b.epochs) for b in bench.baselines] == [("resnet50", 6), ("resnet34", 6), ("resnet18", 3)]


def test_shipped_bench_files():
    for path in sorted(CONFIGS.glob("*.yaml")):
        load_bench(path)
    # The CPU protocol: equal epochs for the three baselines, learning-rate steps at 60% and 85%,
    # ResNet-50 pruned to ResNet-18's MACs at 128x64.
    plan = plan_bench(load_bench(CONFIGS / "cuhk03_cpu.yaml"))
    trained = [c for c in plan.cells if c.kind == "train" and c.dataset == "cuhk03_market"]
    assert {c.arch: (c.cfg.train.epochs, c.cfg.train.milestones) for c in trained} == {
        arch: (24, [14, 20]) for arch in ("resnet50", "resnet34", "resnet18")}
    r50, r18 = (complexity(build_model(arch), (128, 64))["macs"] for arch in ("resnet50", "resnet18"))
    assert plan.budgets["match:resnet18"] == pytest.approx(r18 / r50, abs=1e-4)
    assert all(c.cfg.data.height == 128 and c.cfg.data.width == 64 for c in plan.cells)


def test_dry_run_lists_the_cells(tmp_path, capsys):
    # The CUHK03 bench on a stand-in folder: the dry run now checks that dataset roots exist.
    root = generate_synthetic(tmp_path / "cuhk03", num_ids=8, num_test_ids=4, images_per_camera=2)
    args = _parser().parse_args(["bench", "--config", str(CONFIGS / "cuhk03_cpu.yaml"), "--output", str(tmp_path),
                                 "--dry-run", "--set", f"datasets.cuhk03_market.root={root}"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11 and all("to run" in line for line in lines[:10])
    assert "train resnet50 on cuhk03_market (seed 0)" in lines[0]
    assert "prune synthetic-trained resnet50 with HaoLi to 0.491 of its MACs, fine-tune on cuhk03_market" in lines[9]
    assert not (tmp_path / "cells").exists()


# With the residual streams whole (scope internal) 2% of the MACs is out of reach; the default for a budget,
# scope auto = all, reaches it (ResNet-50 at 128x64 keeps 0.0007 of its MACs with every group at 1 channel).
INTERNAL = "base.prune.scope=internal"


@pytest.mark.parametrize("override, message", [
    ("budgets=[0.02]", r"bench method HaoLi at budget 0.02: a MACs budget of 0.02 cannot be met"),
    ("datasets.cuhk03_market.root=no/such/folder", r"bench dataset cuhk03_market: data.root: folder 'no/such/folder' "
                                                   "does not exist"),
])
def test_dry_run_checks_budgets_and_dataset_roots(tmp_path, capsys, override, message):
    """Issue 12: an infeasible budget was found ~53 min into the CUHK03 bench; --dry-run did not check roots."""
    root = generate_synthetic(tmp_path / "cuhk03", num_ids=8, num_test_ids=4, images_per_camera=2)
    args = _parser().parse_args(["bench", "--config", str(CONFIGS / "cuhk03_cpu.yaml"), "--output",
                                 str(tmp_path / "out"), "--dry-run", "--set", f"datasets.cuhk03_market.root={root}",
                                 "--set", INTERNAL, "--set", override])
    with pytest.raises(ConfigError, match=message):
        args.func(args)
    assert not (tmp_path / "out").exists()


def test_infeasible_budget_fails_before_any_training(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a baseline trained before the budgets were checked")

    monkeypatch.setattr(bench_cells, "train", forbidden)
    bench = load_bench(TINY_FILE, TINY + ["budgets=[0.02]", INTERNAL])
    with pytest.raises(ConfigError, match="at budget 0.02: a MACs budget of 0.02 cannot be met"):
        run_bench(bench, tmp_path / "bench", progress=False, log=_quiet)
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow
def test_cuhk03_cpu_bench_finds_its_data(monkeypatch):
    shared_data("cuhk03_market")
    monkeypatch.chdir(REPO)  # data.root is relative to the working directory
    check_plan(plan_bench(load_bench(CONFIGS / "cuhk03_cpu.yaml")))


def test_config_keys_added_later_change_no_cell_key_while_unset():
    assert "layer_rates" not in bench_keys.hashed(load_config())["prune"]
    rates = bench_keys.hashed(load_config(None, ["prune.layer_rates={layer1.0.conv1: 0.3}"]))["prune"]["layer_rates"]
    assert rates == {"layer1.0.conv1": 0.3}


def test_latency_budgets_plan_cells_with_a_latency_target():
    macs_only = plan_bench(load_bench(TINY_FILE, TINY + ["budgets=[0.5]", "cross_domain=[]"]))
    both = plan_bench(load_bench(TINY_FILE, TINY + ["budgets=[0.5, latency:0.6]", "cross_domain=[]"]))
    assert both.budgets == {"0.5": 0.5, "latency:0.6": 0.6}
    pruned = [c for c in both.cells if c.kind == "prune"]
    latency = [c for c in pruned if c.budget == "latency:0.6"]
    assert latency and all(c.cfg.prune.target_latency == 0.6 and c.cfg.prune.target_macs is None for c in latency)
    assert all(c.cfg.prune.scope == "all" for c in pruned)  # auto, resolved in the cell's config
    assert "to 0.6 of its measured latency" in latency[0].describe()
    # Adding a latency budget leaves the MACs cells (and their cached results) where they were.
    assert {c.key for c in macs_only.cells} <= {c.key for c in both.cells}
