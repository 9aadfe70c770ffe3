"""The bench's references: ``dense`` (the unpruned source, fine-tuned like the pruned cells) and a method at
another method's widths (``{name: random, widths: LABEL}``)."""

from __future__ import annotations

import json

import pytest
import torch

from reid_prune.bench import load_bench, plan_bench, run_bench
from reid_prune.bench.plan import DENSE
from reid_prune.bench.tables import summarize
from reid_prune.config import ConfigError, load_config

from conftest import SMALL_BENCH as SMALL
from conftest import TINY_BENCH as TINY_FILE


def test_one_dense_cell_per_source_and_fine_tuning_seed_whatever_the_budgets():
    bench = load_bench(TINY_FILE, SMALL + ["dense=true", "seeds=[0, 1]", "finetune_seeds=[5, 6]",
                                           "budgets=[0.5, {value: 0.3, finetune_seeds: [6, 7]}]"])
    plan = plan_bench(bench)
    dense = [c for c in plan.cells if c.kind == "dense"]
    # 2 sources x the fine-tuning seeds any budget uses (5, 6, 7), each once.
    assert sorted((c.seed, c.finetune_seed) for c in dense) == [(s, f) for s in (0, 1) for f in (5, 6, 7)]
    for cell in dense:
        p = cell.cfg.prune
        assert (p.rate, p.target_macs, p.finetune_epochs, p.scope) == (0.0, None, 1, "internal")
        assert cell.parent.kind == "train" and cell.parent.seed == cell.seed and cell.cfg.train.seed == cell.finetune_seed
    rows = [r for r in plan.rows if r.cell.kind == "dense"]
    assert len(rows) == len(dense) and {r.name for r in rows} == {DENSE}
    # Without the key, no dense cell, and every other cell keeps its key.
    plain = plan_bench(load_bench(TINY_FILE, SMALL + ["seeds=[0, 1]", "finetune_seeds=[5, 6]",
                                                      "budgets=[0.5, {value: 0.3, finetune_seeds: [6, 7]}]"]))
    assert [c.key for c in plain.cells] == [c.key for c in plan.cells if c.kind != "dense"]


def test_rows_are_compared_with_dense_of_the_same_table():
    def row(name, kind, mAP, seed):
        return {"scenario": "in_domain", "dataset": "a", "pretrain": "a", "finetune": "a", "name": name, "label": name,
                "kind": kind, "method": "", "budget": "" if kind == "dense" else "0.5", "seed": seed,
                "finetune_seed": None, "mAP": mAP, "rank1": mAP, "mINP": mAP, "params": 1, "macs": 1,
                "macs_kept": 1.0, "prune_seconds": None}

    groups = {g["name"]: g for g in summarize([row(DENSE, "dense", 30.0, 0), row(DENSE, "dense", 34.0, 1),
                                               row("HaoLi", "pruned", 25.0, 0), row("HaoLi", "pruned", 26.0, 1)])}
    assert groups["HaoLi"]["vs_dense"] == "-6.5"  # (25 + 26) / 2 - (30 + 34) / 2
    assert groups[DENSE]["vs_dense"] == ""


SAME_WIDTHS = ["methods=[haoli, {name: random, widths: HaoLi}]"]


def test_a_method_at_another_methods_widths_runs_after_it_and_is_keyed_by_it():
    plan = plan_bench(load_bench(TINY_FILE, SMALL + SAME_WIDTHS))
    pruned = [c for c in plan.cells if c.kind == "prune"]
    assert [c.label for c in pruned] == ["HaoLi", "Random (HaoLi widths)"]
    haoli, matched = pruned
    assert matched.same_widths is haoli and haoli.same_widths is None
    assert "at HaoLi's widths" in matched.describe()
    # Its key follows the cell whose widths it keeps: another HaoLi gives another key.
    other = plan_bench(load_bench(TINY_FILE, SMALL + SAME_WIDTHS + ["methods[0].options.greedy=true"]))
    assert other.cells[-1].key != matched.key and other.cells[-1].label == matched.label


@pytest.mark.parametrize("methods, message", [
    ("[haoli, {name: random, widths: FPGM}]", r"methods\[1\].widths: 'FPGM' is not the label"),
    ("[{name: random, widths: HaoLi}, {name: haoli, widths: Random}]", r"methods\[0\].widths: 'HaoLi' is not"),
])
def test_widths_must_name_a_method_that_plans_its_own(methods, message):
    with pytest.raises(ConfigError, match=message):
        load_bench(TINY_FILE, SMALL + [f"methods={methods}"])


@pytest.mark.slow
def test_dense_and_same_width_cells_end_to_end(tmp_path, session_cache):
    out = tmp_path / "bench"
    # HaoLi ranks channels globally: uneven widths, which Random's own uniform plan would not reach.
    bench = load_bench(TINY_FILE, SMALL + ["methods=[{name: haoli, set: {prune.allocation: global}}, "
                                           "{name: random, widths: HaoLi}]", "dense=true"])
    run_bench(bench, out, progress=False)
    plan = plan_bench(bench)
    haoli, matched = (c for c in plan.cells if c.kind == "prune")

    def kept(cell):
        rows = json.loads((out / "cells" / cell.key / "report.json").read_text())["widths"]
        return {r["group"]: (r["channels"], r["kept"]) for r in rows}

    assert kept(matched) == kept(haoli)
    assert len({round(k / c, 2) for c, k in kept(haoli).values()}) > 2  # uneven: not a uniform plan
    assert json.loads((out / "cells" / matched.key / "report.json").read_text())["allocation"] == "layer_rates"
    dense = next(c for c in plan.cells if c.kind == "dense")
    source = torch.load(out / "cells" / dense.parent.key / "run" / "last.pt", weights_only=True)
    tuned = torch.load(out / "cells" / dense.key / "pruned.pt", weights_only=True)
    assert tuned["widths"] == source["widths"]  # nothing cut
    assert any(not torch.equal(tuned["state_dict"][k], v) for k, v in source["state_dict"].items()
               if v.is_floating_point())  # but fine-tuned
    report = json.loads((out / "cells" / dense.key / "report.json").read_text())
    assert report["finetune_epochs"] == 1 and report["achieved"]["macs_ratio"] == 1.0
    results = (out / "results.md").read_text()
    assert DENSE in results and "vs Dense (mAP)" in results
    assert load_config(None, []).prune.rate is None  # the dense cell's rate 0 is its own, not a default


@pytest.mark.slow
def test_random_at_an_anchors_widths_keeps_exactly_them(tmp_path, session_cache):
    pytest.importorskip("torch_pruning")
    out = tmp_path / "bench"
    bench = load_bench(TINY_FILE, SMALL + ["methods=[{name: random, widths: Torch-Pruning L1}]", "anchors=[l1]"])
    run_bench(bench, out, progress=False)  # the bench itself checks the widths after the cut
    anchor, matched = (c for c in plan_bench(bench).cells if c.kind in ("anchor", "prune"))
    assert matched.same_widths is anchor

    def kept(cell):
        rows = json.loads((out / "cells" / cell.key / "report.json").read_text())["widths"]
        return {r["group"]: (r["channels"], r["kept"]) for r in rows}

    assert kept(matched) == kept(anchor)
    assert any(k < c for c, k in kept(anchor).values())


def test_scratch_runs_only_at_its_budgets():
    plan = plan_bench(load_bench(TINY_FILE, SMALL + ["budgets=[0.5, 0.3]", "scratch={widths: HaoLi, budgets: [0.3]}"]))
    assert [c.budget for c in plan.cells if c.kind == "scratch"] == ["0.3"]
    with pytest.raises(ConfigError, match=r"scratch.budgets\[0\]: 0.7 is not a budget"):
        load_bench(TINY_FILE, SMALL + ["budgets=[0.5, 0.3]", "scratch={widths: HaoLi, budgets: [0.7]}"])


@pytest.mark.slow
def test_with_a_validation_split_every_row_is_scored_on_the_test_split(tmp_path, session_cache):
    from reid_prune.jobs.evaluate import evaluate_checkpoint

    out = tmp_path / "bench"
    bench = load_bench(TINY_FILE, SMALL + ["base.data.val_ids=2", "datasets.synthetic_a.synthetic.ids=12"])
    run_bench(bench, out, progress=False)
    results = json.loads((out / "results.json").read_text())["rows"]
    for cell in plan_bench(bench).cells:
        run = out / "cells" / cell.key
        checkpoint = run / "run" / "last.pt" if cell.kind == "train" else run / "pruned.pt"
        test = evaluate_checkpoint(cell.cfg, checkpoint, progress=False)  # the test split, independently
        row = next(r for r in results if r["cell"] == cell.key)
        assert row["mAP"] == pytest.approx(test["mAP"], abs=0.01)
        if cell.kind == "train":  # its own last evaluation read the validation split: not what the row shows
            last = json.loads((run / "run" / "metrics.jsonl").read_text().splitlines()[-1])
            assert last["mAP"] != pytest.approx(test["mAP"], abs=0.01)
