"""The methods protocol (configs/bench/cuhk03_methods_cpu.yaml): its plan, its structure end to end on tiny data,
the comparison with random, and evaluation-only settings that re-score instead of retraining.

The end-to-end run keeps the file's structure (every method entry, random, scratch, both Torch-Pruning
anchors, two fine-tuning seeds, one epoch) on tiny synthetic data at 64x32, but at one budget (0.5) instead
of two, to keep this file near two minutes on one core; the second budget's cells are checked by the plan
test, which builds every cell of the real file.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import statistics
from pathlib import Path

import pytest
import torch

from reid_prune.bench import cells as bench_cells, check_plan, load_bench, plan_bench
from reid_prune.bench.cells import scratch_model
from reid_prune.bench.keys import EVAL_ONLY, reads_evaluation
from reid_prune.bench.contrasts import ASSUMED, contrasts
from reid_prune.checkpoint import module_widths, read_checkpoint
from reid_prune.cli import main
from reid_prune.config import changed_keys, load_config
from reid_prune.jobs.evaluate import evaluate_checkpoint
from reid_prune.jobs.prune import pruner_from_config
from reid_prune.precision import resolve_precision
from reid_prune.pruners import available
from reid_prune.pruners.criteria import Taylor
from reid_prune.pruners.schedules import PlayAndPrune

from conftest import REPO, shared_data, use_cache

FILE = REPO / "configs" / "bench" / "cuhk03_methods_cpu.yaml"
# Torch-Pruning anchors are planned only where the optional bench extra is installed (CI installs it).
ANCHORS = ["Torch-Pruning L1", "Torch-Pruning Taylor"] if importlib.util.find_spec("torch_pruning") else []
SURVEY = {"haoli", "fpgm", "psfp", "molchanov", "entropy", "thinet", "channel_pruning", "autobalanced", "afp_prc"}
# The file's structure on tiny synthetic data: one epoch of 2 batches of 4 x 2 images, scored on 4 identities.
# Molchanov's and Entropy's steps between rounds are cut to one (methods[3] and [4] of the file).
TINY = [
    "input_size=[64, 32]",
    "datasets.cuhk03_market={dataset: synthetic, root: '', name: '', "
    "synthetic: {ids: 8, test_ids: 4, images_per_camera: 2, seed: 0}}",
    "base.data.p=4", "base.data.k=2", "base.data.workers=0", "base.data.eval_batch_size=64",
    "base.train.max_batches=2", "base.train.device=cpu", "base.prune.data_batches=1",
    "base.eval.latency_batch_sizes=[1]", "baselines[0].epochs=1", "finetune_epochs=1",
    "budgets=[{value: 0.5, finetune_seeds: [0, 1]}]",
    "methods[3].options={rounds: 2, finetune_steps: 1}", "methods[4].options={finetune_steps: 1}",
]


def _bench_cli(out: Path, overrides: list[str]) -> int:
    return main(["bench", "--config", str(FILE), "--output", str(out), "--quiet",
                 *[a for o in overrides for a in ("--set", o)]])


def _counted(monkeypatch) -> dict[str, int]:
    """Count the trainings and prunings the bench starts (each still runs)."""
    calls = {"train": 0, "prune_checkpoint": 0}
    for name in calls:
        real = getattr(bench_cells, name)

        def counted(*args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(bench_cells, name, counted)
    return calls


def _table(md: str, title: str) -> dict[str, dict[str, str]]:
    """{row name: {column: cell}} of the markdown table under ``## title``."""
    lines = md.split(f"## {title}\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(headers, row)) for row in rows}


def test_the_file_plans_the_protocol():
    bench = load_bench(FILE)
    plan = plan_bench(bench)
    recipe = load_config(REPO / "configs" / "cuhk03_market_resnet18_cpu.yaml")
    (source,) = [c for c in plan.cells if c.kind == "train"]
    # The source model is the recipe's run: only how fast it runs, where it writes and the scope its config
    # states (auto, resolved in every cell's config and key; a training prunes nothing) may differ.
    assert set(changed_keys(recipe.to_dict(), source.cfg.to_dict())) <= {"output", "eval.latency", "prune.scope"}
    assert source.cfg.prune.scope == "internal" and recipe.prune.scope == "auto"
    cells = [c for c in plan.cells if c.kind != "train"]
    assert {c.parent.key for c in cells if c.kind in ("prune", "anchor")} == {source.key}
    assert {c.method.name for c in cells if c.kind == "prune"} == SURVEY | {"random"}
    assert SURVEY | {"random"} <= set(available())
    for cell in cells:
        seeds = [c.finetune_seed for c in cells if c.label == cell.label and c.budget == cell.budget]
        assert sorted(seeds) == [0, 1], cell.label
        assert cell.target_macs == float(cell.budget)
        if cell.kind == "prune":
            p = cell.cfg.prune
            assert p.finetune_epochs == bench.finetune_epochs and p.target_macs == float(cell.budget)
            internal = cell.method.name in ("entropy", "thinet", "channel_pruning") or cell.label == "HaoLi (internal)"
            assert p.scope == ("internal" if internal else "all")
            assert p.include_last_stage == (cell.label == "HaoLi (last stage too)")
            assert p.allocation is None  # each paper's own allocation
            # Documented defaults: no option set, but the methods that draw at random draw with the cell's seed,
            # and one labelled AFP+PRC entry that sets its thresholds to reach the budget in 5 epochs.
            fast = {"threshold": 1.0, "push_fraction": 0.2, "tolerance": 10}
            assert {k: v for k, v in p.options.items() if k != "seed"} == (fast if cell.label == "AFP+PRC fast" else {})
            if cell.method.name in ("random", "thinet", "channel_pruning"):
                assert p.options.get("seed", 0) == cell.finetune_seed
            else:
                assert "seed" not in p.options
    assert {c.label for c in cells if c.kind == "prune" and c.method.name == "afp_prc"} == {"AFP+PRC", "AFP+PRC fast"}
    assert {c.label for c in cells if c.kind == "prune" and c.method.name == "haoli"} == {
        "HaoLi", "HaoLi (internal)", "HaoLi (last stage too)"}
    # Every method at both budgets, in both seeds: 13 entries + 2 anchors + scratch, 2 x 2, and the source.
    assert len(plan.cells) == 1 + (13 + len(ANCHORS) + 1) * 4
    assert bool(ANCHORS) != any("torch-pruning is not installed" in n for n in plan.notes)
    scratch = [c for c in cells if c.kind == "scratch"]
    assert {c.parent.label for c in scratch} == {"HaoLi"}
    assert all(c.cfg.train.epochs == 40 + bench.finetune_epochs for c in scratch)
    total = 40 + bench.finetune_epochs  # the source's steps at 24 and 34 of 40, scaled to the longer run
    assert all(c.cfg.train.milestones == [round(24 * total / 40), round(34 * total / 40)] for c in scratch)


def test_the_file_finds_its_data(monkeypatch):
    shared_data("cuhk03_market")
    monkeypatch.chdir(REPO)  # data.root is relative to the working directory
    check_plan(plan_bench(load_bench(FILE)), dry_run=True)  # the root, every method's settings and budget


def test_declared_reads_give_the_evaluation_settings_of_the_old_rule():
    """A pruned cell's key keeps the evaluation settings its method's criterion and schedule declare they read
    (``reads``). For every registered method they are those the bench's rule by class gave: all of them for the
    AFP+PRC schedule (it steers by the validation mAP), the retrieval feature for a Taylor criterion."""
    kinds = set()
    for name in available():
        cfg = load_config(None, [f"prune.method={name}", "prune.target_macs=0.5"])
        pruner = pruner_from_config(cfg)
        if isinstance(pruner.schedule, PlayAndPrune):
            old = EVAL_ONLY
        elif isinstance(pruner.criterion, Taylor):
            old = ("model.retrieval_feature",)
        else:
            old = ()
        kinds.add(old)
        assert reads_evaluation(cfg, f"method {name}") == old, name
    assert len(kinds) == 3  # the registry has methods of each kind, so each branch was checked


def test_comparison_with_random_hand_cases():
    # The protocol's shape: one source model (seed 0), fine-tuning seeds 0 and 1, so n = 2 pairs and df = 1.
    def row(name, method, mAP, ft, kept=0.5, kind="pruned"):
        return {"scenario": "in_domain", "dataset": "d", "pretrain": "d", "finetune": "d", "name": name,
                "label": name, "kind": kind, "method": method, "budget": "0.5", "seed": 0, "finetune_seed": ft,
                "mAP": mAP, "macs_kept": kept, "same_widths_as": ""}

    rows = [row("ResNet18", "", 40.0, None, 1.0, "baseline")]
    rows += [row("Random", "random", (20.0, 22.0)[ft], ft) for ft in (0, 1)]
    rows += [row("HaoLi", "haoli", (25.0, 29.0)[ft], ft) for ft in (0, 1)]
    rows += [row("AFP+PRC", "afp_prc", 40.0, ft, kept=0.61) for ft in (0, 1)]
    records, (family,) = contrasts(rows)
    # The baseline and Random itself have no contrast; AFP+PRC kept 0.61: another budget, listed, not tested.
    assert [(c["contrast"], c["note"]) for c in records] == [
        ("HaoLi − Random", ASSUMED),
        ("AFP+PRC − Random", "not compared: other budget (0.610 of the MACs kept, Random 0.500)")]
    haoli = records[0]
    # Differences 25 - 20 = 5 and 29 - 22 = 7: mean 6, sd sqrt(2), se sqrt(2) / sqrt(2) = 1, t = 6 on 1 df.
    # df = 1 is the Cauchy distribution: two-sided p = 1 - (2 / pi) atan(6) = 0.10513691342250675, and
    # t_{0.975, 1} = tan(0.475 pi) = 12.706204736174696 (tables: 12.706): interval 6 -+ 12.706.
    assert (haoli["n"], haoli["mean"], haoli["t"]) == pytest.approx((2, 6.0, 6.0))
    assert haoli["p"] == pytest.approx(0.10513691342250675, rel=1e-9)
    assert (haoli["low"], haoli["high"]) == pytest.approx((6 - 12.706204736174696, 6 + 12.706204736174696), rel=1e-9)
    # Alone in its family (m = 1): Holm changes nothing, its step is the 95% interval; it contains 0.
    assert (haoli["holm_p"], haoli["holm_level"], haoli["holm_low"]) == pytest.approx((haoli["p"], 0.95, haoli["low"]))
    assert not haoli["resolved"] and records[1]["p"] is None and not records[1]["resolved"]
    assert (family["m"], family["pairs"]) == (1, 2)
    assert family["smallest_resolvable"] == pytest.approx(12.706204736174696, rel=1e-9)  # t_{0.975, 1} x se 1


def test_scratch_model_is_drawn_anew_at_the_pruned_widths():
    config = {"arch": "resnet18", "num_classes": 5, "zero_init_residual": True, "pretrained": "none"}
    widths = module_widths(_narrowed(config, 32))
    torch.manual_seed(0)
    model = scratch_model(config, widths)
    conv = model.layer1[0].conv1
    assert conv.out_channels == 32
    # torchvision's rule (Kaiming normal, fan-out) at the new width, not PyTorch's default for a resized layer.
    expected = (2 / (32 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert torch.all(model.layer1[0].bn1.weight == 1) and torch.all(model.layer1[0].bn2.weight == 0)
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.1)


def _narrowed(config: dict, channels: int) -> torch.nn.Module:
    """A resnet18 whose layer1.0.conv1 keeps ``channels`` outputs (its BN and the next conv follow)."""
    from reid_prune.backbone import build_model
    from reid_prune.checkpoint import apply_widths

    model = build_model(**config)
    widths = module_widths(model)
    widths["layer1.0.conv1"] = [channels, widths["layer1.0.conv1"][1]]
    widths["layer1.0.bn1"] = [channels]
    widths["layer1.0.conv2"] = [widths["layer1.0.conv2"][0], channels]
    return apply_widths(model, widths)


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    """The file's structure run once on tiny data, then run again: (output folder, calls of the second run)."""
    out = tmp_path_factory.mktemp("methods") / "bench"
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, out.parent / "cache")
        assert _bench_cli(out, TINY) == 0
        first = json.loads((out / "results.json").read_text())
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
        calls = _counted(mp)
        assert _bench_cli(out, TINY) == 0
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps
    return out, first, calls


@pytest.mark.slow
def test_protocol_end_to_end_files_and_rows(protocol):
    out, summary, _ = protocol
    umask = os.umask(0)
    os.umask(umask)
    for name in ("results.md", "results.csv", "results.json"):
        assert (out / name).stat().st_size > 0
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # readable like any file, not 0600
    if importlib.util.find_spec("matplotlib"):
        # One budget and no dense row: no curve of mAP against MACs kept to draw (None), and no curve.png.
        assert summary["plots"] == {"pareto": True, "widths": True, "curve": None}
        assert all((out / f"{plot}.png").stat().st_size > 0 for plot in ("pareto", "widths"))
        assert not (out / "curve.png").exists()
    bench = load_bench(FILE)
    labels = [m.label for m in bench.methods] + ANCHORS + ["Scratch (HaoLi widths)"]
    groups = {g["name"]: g for g in summary["groups"]}
    assert list(groups) == ["ResNet18", *labels]
    assert all(groups[label]["n"] == 2 for label in labels) and groups["ResNet18"]["n"] == 1
    rows = summary["rows"]
    assert len(rows) == 1 + 2 * len(labels) and summary["complete"]
    by = {(r["label"], r["finetune_seed"]): r for r in rows}
    full = by["ResNet18", None]
    for r in rows:
        assert r["latency_ms_batch1"] > 0 and r["scored_by"] == "run"
        assert r["macs_kept"] == round(r["macs"] / full["macs"], 4)
        if r["kind"] in ("pruned", "anchor"):
            assert r["prune_seconds"] > 0
            if r["method"] != "afp_prc":  # AFP+PRC stops at its tolerance: 0.5 is only its cap
                assert r["macs_kept"] == pytest.approx(0.5, abs=0.02), r["name"]
    assert 0.48 <= by["AFP+PRC", 0]["macs_kept"] <= 1
    # Scratch trains HaoLi's widths anew, for 1 + 1 epochs.
    cells = out / "cells"
    for seed in (0, 1):
        haoli = read_checkpoint(cells / by["HaoLi", seed]["cell"] / "pruned.pt")
        scratch = read_checkpoint(cells / by["Scratch (HaoLi widths)", seed]["cell"] / "run" / "last.pt")
        assert scratch["widths"] == haoli["widths"] and scratch["epoch"] == 2
        assert not torch.equal(scratch["state_dict"]["conv1.weight"], haoli["state_dict"]["conv1.weight"])
    # Torch-Pruning cuts the last stage too (this library's scope all leaves it whole).
    if ANCHORS:
        anchor = read_checkpoint(cells / by["Torch-Pruning L1", 0]["cell"] / "pruned.pt")["widths"]
        assert anchor["layer4.1.conv2"][0] < 512 and haoli["widths"]["layer4.1.conv2"][0] == 512
    with open(out / "results.csv", newline="") as fh:
        assert [r["cell"] for r in csv.DictReader(fh)] == [r["cell"] for r in rows]
    # bench.yaml is the resolved file: read back, it plans the same cells.
    assert {c.key for c in plan_bench(load_bench(out / "bench.yaml")).cells} == {r["cell"] for r in rows}


@pytest.mark.slow
def test_protocol_mean_std_and_random_columns(protocol):
    out, summary, _ = protocol
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = _table((out / "results.md").read_text(), "In-domain: cuhk03_market")
    assert f"CPU latency / source (batch 1, 1 thread, {resolve_precision('auto', 'cpu')}, channels_last)" in table["HaoLi"]
    for name in table:
        runs = [r for r in rows if r["name"] == name]
        assert table[name]["n"] == str(len(runs))
        for column, key in (("mAP", "mAP"), ("R-1", "rank1"), ("mINP", "mINP")):
            values = [float(r[key]) for r in runs]
            text = f"{statistics.fmean(values):.1f}"
            if len(values) > 1:
                text += f" ± {statistics.stdev(values):.1f}"
            assert table[name][column] == text, (name, column)
    assert "vs Random (mAP)" not in table["HaoLi"] and "2 x std" not in (out / "results.md").read_text()
    _check_contrasts((out / "results.md").read_text(), rows)


def _check_contrasts(md: str, rows: list[dict[str, str]]) -> None:
    """The criterion contrasts of the tiny protocol (every method minus Random, paired by fine-tuning seed),
    recomputed from results.csv: two pairs, so t has 1 degree of freedom (Cauchy: quantile tan(pi (q - 1/2)),
    two-sided p 1 - (2 / pi) atan|t|), independently of scipy."""
    contrast = _table(md, "cuhk03_market, budget 0.5: paired contrasts (mAP)")
    by = {}
    for r in rows:
        by.setdefault(r["name"], {})[r["finetune_seed"]] = r
    methods = [n for n, runs in by.items() if all(r["kind"] == "pruned" and r["method"] != "random"
                                                  for r in runs.values())]
    expected, tested = {}, []
    for name in methods:
        kept = [abs(float(by[name][s]["macs_kept"]) - float(by["Random"][s]["macs_kept"])) for s in ("0", "1")]
        if max(kept) > 0.02:
            expected[f"{name} − Random"] = None
            continue
        d = [float(by[name][s]["mAP"]) - float(by["Random"][s]["mAP"]) for s in ("0", "1")]
        mean, se = (d[0] + d[1]) / 2, abs(d[0] - d[1]) / 2  # sd |d0 - d1| / sqrt(2), over sqrt(2)
        expected[f"{name} − Random †"] = (mean, se)
        if se > 0:
            tested.append((1 - 2 / math.pi * math.atan(abs(mean) / se), f"{name} − Random †"))
    assert set(expected) == set(contrast)
    m = len(tested)
    holm, running = {}, 0.0
    for rank, (p, name) in enumerate(sorted(tested, key=lambda x: x[0]), start=1):  # Holm: alpha / (m - i + 1)
        running = max(running, min(1.0, (m - rank + 1) * p))
        holm[name] = (running, 1 - 0.05 / (m - rank + 1))
    for name, value in expected.items():
        line = contrast[name]
        if value is None:
            assert line["95% t interval"].startswith("not compared: other budget"), name
            continue
        mean, se = value
        assert line["n pairs"] == "2" and line["mean difference"] == f"{mean:+.2f}", name
        if se == 0:
            assert line["95% t interval"] == "no spread in the differences", name
            continue
        half = math.tan(math.pi * 0.475) * se
        assert line["95% t interval"] == f"[{mean - half:+.2f}, {mean + half:+.2f}]", name
        p, level = holm[name]
        half = math.tan(math.pi * (level / 2)) * se  # q = (1 + level) / 2: tan(pi (q - 1/2)) = tan(pi level / 2)
        assert line["Holm-adjusted interval"] == f"[{mean - half:+.2f}, {mean + half:+.2f}] at {100 * level:.4g}%"
        assert line["Holm p"] == ("< 0.001" if p < 0.001 else f"{p:.3f}"), name
        assert line["resolved"] == ("yes" if p < 0.05 and abs(mean) > half else "no"), name


@pytest.mark.slow
def test_protocol_second_run_trains_nothing(protocol):
    out, first, calls = protocol
    assert calls == {"train": 0, "prune_checkpoint": 0}
    assert json.loads((out / "results.json").read_text())["rows"] == first["rows"]


@pytest.mark.slow
def test_evaluation_only_settings_rescore_without_training(tmp_path, monkeypatch, cache_at):
    cache_at()
    out = tmp_path / "bench"
    small = [o for o in TINY if not o.startswith("methods[")] + [
        "budgets=[{value: 0.5, finetune_seeds: [0]}]", "anchors=[l1]",
        "methods=[haoli, {name: molchanov, options: {rounds: 2, finetune_steps: 1}}, afp_prc]"]
    assert _bench_cli(out, small) == 0
    before = {r["label"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert {r["scored_by"] for r in before.values()} == {"run"}

    # The distance is an evaluation setting for every cell but AFP+PRC, whose cuts follow the validation mAP.
    calls = _counted(monkeypatch)
    assert _bench_cli(out, small + ["base.eval.metric=euclidean"]) == 0
    assert calls == {"train": 0, "prune_checkpoint": 1}
    after = {r["label"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert after["AFP+PRC"]["cell"] != before["AFP+PRC"]["cell"] and after["AFP+PRC"]["scored_by"] == "run"
    for label in ("ResNet18", "HaoLi", "Molchanov", *ANCHORS[:1], "Scratch (HaoLi widths)"):
        assert after[label]["cell"] == before[label]["cell"], label
        assert after[label]["scored_by"].startswith("eval-cuhk03_market-"), label
        assert (out / "cells" / after[label]["cell"] / after[label]["scored_by"]).is_file()
    cfg = load_config(REPO / "configs" / "cuhk03_market_resnet18_cpu.yaml",
                      ["eval.metric=euclidean", "eval.latency=false", "data.dataset=synthetic", "data.root=",
                       "data.height=64", "data.width=32", "data.synthetic.ids=8", "data.synthetic.test_ids=4",
                       "data.synthetic.images_per_camera=2", "data.workers=0", "train.device=cpu"])
    rescored = evaluate_checkpoint(cfg, out / "cells" / after["HaoLi"]["cell"] / "pruned.pt", progress=False)
    assert after["HaoLi"]["mAP"] == round(rescored["mAP"], 2)
    assert after["HaoLi"]["pruned_mAP"] is None  # the model right after the cut is not kept to re-score

    # The retrieval feature also feeds Molchanov's Taylor loss: that cell is new; the others are re-scored.
    calls = _counted(monkeypatch)
    assert _bench_cli(out, small + ["base.model.retrieval_feature=after_neck"]) == 0
    assert calls == {"train": 0, "prune_checkpoint": 2}
    last = {r["label"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert last["Molchanov"]["cell"] != before["Molchanov"]["cell"]
    assert last["HaoLi"]["cell"] == before["HaoLi"]["cell"] and last["HaoLi"]["scored_by"] != after["HaoLi"]["scored_by"]


def test_torch_pruning_anchor_meets_the_budget_without_a_classifier():
    pytest.importorskip("torch_pruning")
    from reid_prune.backbone import build_model
    from reid_prune.bench.anchors import TorchPruningAnchor
    from reid_prune.evaluation import complexity
    from reid_prune.pruners import PruneContext

    model = build_model("resnet18").eval()
    full = complexity(model, (64, 32))["macs"]
    pruned = TorchPruningAnchor("l1", target_macs=0.5, input_size=(64, 32)).prune(model, PruneContext())
    assert complexity(pruned, (64, 32))["macs"] / full == pytest.approx(0.5, abs=0.02)
    # The BNNeck follows the cut last stage and keeps its fixed shift; the network still runs.
    assert pruned.neck.num_features == pruned.layer4[1].bn2.num_features < 512
    assert not pruned.neck.bias.requires_grad
    assert pruned(torch.randn(2, 3, 64, 32)).shape == (2, pruned.neck.num_features)
