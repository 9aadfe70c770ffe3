"""Cross-domain as a 2 x 2: where a data-driven method prunes (``cross_domain[].prune_data``) apart from where it
is fine-tuned, beside the dense source fine-tuned on the target; and the prune job's ``prune_data``."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from conftest import SMALL_BENCH, TINY_BENCH, TINY_RUN
from reid_prune.backbone import build_model
from reid_prune.bench import load_bench, plan_bench, run_bench
from reid_prune.bench.keys import PRUNING_RULES, cell_key, hashed, reads_evaluation
from reid_prune.bench.plan import DENSE
from reid_prune.bench.plots import _display
from reid_prune.bench.tables import markdown_report, result_rows, summarize
from reid_prune.checkpoint import replace_classifier, save_checkpoint
from reid_prune.config import ConfigError, load_config
from reid_prune.jobs.prune import prune_checkpoint

# Two generated populations (other people, same rendering) and nothing in-domain.
TWO = ["datasets={a: {synthetic: {ids: 8, test_ids: 4, images_per_camera: 2, seed: 0}}, "
       "b: {synthetic: {ids: 8, test_ids: 4, images_per_camera: 2, seed: 1}}}", "compare=[]"]
# HaoLi scores weights, Entropy scores activations (data), PSFP prunes while it fine-tunes.
METHODS = ["methods=[haoli, {name: entropy, options: {finetune_steps: 0}}, psfp]"]
PLAIN = "cross_domain=[{source: a, target: b}]"
BOTH = "cross_domain=[{source: a, target: b, prune_data: [source, target]}]"


def _plan(*extra: str):
    return plan_bench(load_bench(TINY_BENCH, SMALL_BENCH + TWO + METHODS + list(extra)))


def _pruned(plan, label: str) -> dict[tuple[str, str], object]:
    """{(pruning data, fine-tuning data): cell} of the method's pruned cells."""
    return {(c.pruned_on, c.dataset): c for c in plan.cells if c.kind == "prune" and c.label == label}


def test_a_data_driven_method_gets_the_2x2_and_the_others_keep_their_two_cells():
    plain, both = _plan(PLAIN), _plan(BOTH)
    assert set(_pruned(both, "Entropy")) == {("a", "a"), ("b", "a"), ("a", "b"), ("b", "b")}
    for label in ("HaoLi", "PSFP"):  # pruning data irrelevant (weights) or none of its own (prunes in training)
        assert set(_pruned(both, label)) == {("a", "a"), ("b", "b")}
        assert [c.key for c in _pruned(both, label).values()] == [c.key for c in _pruned(plain, label).values()]
    # The diagonal (pruned with its fine-tuning data) is today's cell, key for key; every old cell is kept.
    entropy, before = _pruned(both, "Entropy"), _pruned(plain, "Entropy")
    assert entropy[("a", "a")].key == before[("a", "a")].key and entropy[("b", "b")].key == before[("b", "b")].key
    assert {c.key for c in plain.cells} < {c.key for c in both.cells}
    for (_, finetune), prefix in ((("a", "a"), "prune-a"), (("b", "b"), "prune-a-to-b")):  # today's key rule
        cell = entropy[(finetune, finetune)]
        spec = {"kind": "prune", "config": hashed(cell.cfg, reads_evaluation(cell.cfg, "")), "parent": cell.parent.key,
                "rules": PRUNING_RULES}
        assert cell.key == cell_key(f"{prefix}-Entropy-0.5-s0", spec)
    off = entropy[("b", "a")], entropy[("a", "b")]
    assert len({c.key for c in entropy.values()}) == 4
    for cell, data_seed in zip(off, (1, 0)):  # the pruning data travels to the prune job
        assert cell.pretrain == "a" and cell.prune_data.synthetic.seed == data_seed
        assert cell.cfg.data.synthetic.seed == 1 - data_seed and cell.parent.key == entropy[("a", "a")].parent.key
    assert "-pruned-on-b-" in off[0].key and "on b's data" in off[0].describe()
    # The pruning data is in the key: other B data, another key for the cell fine-tuned on A, pruned on B.
    moved = _pruned(_plan(BOTH, "datasets.b.synthetic.ids=10"), "Entropy")
    assert moved[("b", "a")].key != off[0].key and moved[("a", "a")].key == entropy[("a", "a")].key
    names = {r.cell.key: r.name for r in both.rows}
    assert names[off[0].key] == "Entropy (pruned on b, fine-tuned on a)"
    assert names[off[1].key] == "Entropy (pruned on a, fine-tuned on b)"
    assert names[entropy[("a", "a")].key] == names[entropy[("b", "b")].key] == "Entropy"
    assert all(r.scenario == "cross_domain" and r.dataset == "b" for r in both.rows)


def test_the_2x2_has_the_dense_source_fine_tuned_on_the_target():
    plain, both = _plan(PLAIN), _plan(BOTH)
    assert not [c for c in plain.cells if c.kind == "dense"]
    (dense,) = [c for c in both.cells if c.kind == "dense"]
    assert (dense.pretrain, dense.dataset, dense.parent.key) == ("a", "b", f"{plain.cells[0].key}")
    assert dense.cfg.prune.rate == 0.0 and dense.cfg.data.synthetic.seed == 1
    assert [(r.name, r.dataset) for r in both.rows if r.cell is dense] == [(DENSE, "b")]
    assert "fine-tune a-trained resnet18 unpruned on b" in dense.describe()
    # The bench's dense asks for it too, without the 2 x 2; in-domain dense cells keep their keys.
    (only,) = [c for c in _plan(PLAIN, "dense=true").cells if c.kind == "dense"]
    assert only.key == dense.key
    in_domain = [c for c in _plan("compare=[a]", "dense=true", PLAIN).cells if c.kind == "dense"]
    assert {c.pretrain for c in in_domain} == {"a"} and len({c.key for c in in_domain}) == 2


def test_prune_data_source_alone_prunes_everything_on_the_source():
    cells = _pruned(_plan("cross_domain=[{source: a, target: b, prune_data: [source]}]"), "Entropy")
    assert set(cells) == {("a", "a"), ("a", "b")}
    assert cells[("a", "a")].key == _pruned(_plan(PLAIN), "Entropy")[("a", "a")].key


@pytest.mark.parametrize("value, message", [
    ("[source, sauce]", r"cross_domain\[0\].prune_data\[1\]: expected source or target .*got 'sauce'; did you mean"),
    ("[a]", r"cross_domain\[0\].prune_data\[0\]: expected source or target \(the scenario's sides, here a and b\)"),
    ("[]", r"cross_domain\[0\].prune_data: give source, target or both"),
    ("[target, target]", r"cross_domain\[0\].prune_data: sides must differ; repeated: target"),
])
def test_prune_data_values_are_checked(value, message):
    with pytest.raises(ConfigError, match=message):
        _plan(f"cross_domain=[{{source: a, target: b, prune_data: {value}}}]")


def test_prune_data_needs_one_input_size():
    with pytest.raises(ConfigError, match=r"cross_domain\[0\].prune_data: a and b have other input sizes"):
        _plan(BOTH, "input_size=null", "datasets.b.height=96")


def _fake_results(plan):
    results, scores = {}, {}
    for i, cell in enumerate(plan.cells):
        results[cell.key] = {"params": 10, "macs": 100 if cell.kind in ("train", "dense") else 50,
                             "wall_seconds": 1.0}
        metrics = {k: 10.0 + i for k in ("mAP", "rank1", "rank5", "mINP")}
        scores[(cell.key, "b")] = {"metrics": metrics, "pruned_metrics": None, "scored_by": "test"}
    return results, scores


def test_rows_tables_and_plot_labels_name_the_pruning_data():
    bench = load_bench(TINY_BENCH, SMALL_BENCH + TWO + METHODS + [BOTH])
    plan = plan_bench(bench)
    rows = result_rows(plan, bench.prune_arch, *_fake_results(plan), {})
    by_name = {(r["name"], r["finetune"]): r for r in rows}
    assert by_name[("Entropy (pruned on b, fine-tuned on a)", "a")]["prune_data"] == "b"
    assert by_name[("Entropy", "a")]["prune_data"] == "a" and by_name[("HaoLi", "b")]["prune_data"] == "b"
    assert by_name[(DENSE, "b")]["prune_data"] == "" and by_name[("ResNet18", "")]["prune_data"] == ""
    groups = summarize(rows)
    assert len(groups) == len(rows)  # each row its own group: the off-diagonal rows are not averaged in
    off = next(g for g in groups if g["name"] == "Entropy (pruned on a, fine-tuned on b)")
    assert off["prune_data"] == "a" and off["vs_dense"] != ""  # against the source fine-tuned on the target
    assert _display(off) == "Entropy, pruned on a, fine-tuned on b"
    assert _display(next(g for g in groups if g["name"] == "Entropy" and g["finetune"] == "b")) == (
        "Entropy, fine-tuned on b")
    md = markdown_report(bench, plan, rows, groups, command="", plots={}, final=False, pending=0)
    for line in ("| Entropy (pruned on b, fine-tuned on a) | pruned on b, fine-tuned on a |",
                 "| Entropy | pruned and fine-tuned on a |", f"| {DENSE} | not pruned, fine-tuned on b |",
                 "| ResNet18 | no pruning, no fine-tuning (trained on a) |"):
        assert line in md
    header = next(line for line in md.splitlines() if line.startswith("| Networks | adaptation |"))
    assert header.endswith("| vs Dense (mAP) |")  # the scenario's dense reference: its own column
    row = next(line for line in md.splitlines() if line.startswith("| Entropy (pruned on a, fine-tuned on b) |"))
    assert row.endswith(f"| {off['vs_dense']} |") and off["vs_dense"].startswith(("+", "-"))


def test_a_new_classifier_keeps_the_pruned_network():
    model = build_model("resnet18", num_classes=12)
    model.classifier = torch.nn.Linear(400, 12, bias=False)  # a pruned feature width
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")}
    replace_classifier(model, 8, seed=3)
    assert (model.classifier.in_features, model.classifier.out_features) == (400, 8)
    assert model.build_config["num_classes"] == 8
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())
    drawn = [replace_classifier(build_model("resnet18", num_classes=12), 8, seed).classifier.weight
             for seed in (3, 3, 4)]
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])  # the seed alone decides it


# --------------------------------------------------------------------------------------------- the prune job

def _config(*extra: str):
    return load_config(None, TINY_RUN + ["train.warmup_epochs=0", "eval.latency=false", "prune.rate=0.5",
                                         "prune.scope=internal", *extra])


def _other_people(cfg, ids: int = 12):
    """cfg.data with another population: the same rendering, other identities."""
    return dataclasses.replace(cfg.data, synthetic=dataclasses.replace(cfg.data.synthetic, seed=7, ids=ids))


@pytest.mark.parametrize("method, message", [("psfp", "prunes during training"), ("haoli", "reads no data")])
def test_the_job_refuses_prune_data_a_method_cannot_read(tmp_path, method, message):
    cfg = _config(f"prune.method={method}", "prune.finetune_epochs=1")
    save_checkpoint(tmp_path / "start.pt", build_model("resnet18", num_classes=12))
    with pytest.raises(ValueError, match=f"prune_data.*{message}"):
        prune_checkpoint(cfg, tmp_path / "start.pt", output=tmp_path / "out", progress=False,
                         prune_data=_other_people(cfg))
    bigger = dataclasses.replace(_other_people(cfg), height=128)
    with pytest.raises(ValueError, match="prune_data.*images of 128x32"):
        prune_checkpoint(_config("prune.method=entropy"), tmp_path / "start.pt", output=tmp_path / "out",
                         progress=False, prune_data=bigger)
    assert not (tmp_path / "out" / "pruned.pt").exists()


@pytest.mark.slow
def test_the_criterion_and_the_own_training_read_the_pruning_data(tiny_run, cache_at, tmp_path):
    cache_at(tiny_run / "cache")
    start = tiny_run / "run" / "best.pt"

    def prune(name, *extra, **kwargs):
        cfg = _config("prune.method=entropy", *extra)
        report = prune_checkpoint(cfg, start, output=tmp_path / name, progress=False, **kwargs)
        return report, torch.load(tmp_path / name / "pruned.pt", weights_only=True)

    cfg = _config()
    # No fine-tuning, no training between layers: only the criterion's batches read the pruning data.
    scored = ["prune.finetune_epochs=0", "prune.options.finetune_steps=0"]
    plain, plain_ckpt = prune("plain", *scored)
    same, same_ckpt = prune("same", *scored, prune_data=cfg.data)
    other, other_ckpt = prune("other", *scored, prune_data=_other_people(cfg))
    # The same data as cfg.data: the very run without prune_data (same channels, bit-identical weights).
    assert same["widths"] == plain["widths"] and same_ckpt["widths"] == plain_ckpt["widths"]
    assert all(torch.equal(v, same_ckpt["state_dict"][k]) for k, v in plain_ckpt["state_dict"].items())
    assert (plain["prune_data"], same["prune_data"], other["prune_data"]) == (None, "synthetic", "synthetic")
    # Other people's images: other channels kept (uniform widths, so the kept weights differ).
    assert other_ckpt["widths"] == plain_ckpt["widths"]
    assert any(not torch.equal(v, other_ckpt["state_dict"][k]) for k, v in plain_ckpt["state_dict"].items()
               if not k.startswith("classifier"))

    # Own training between layers, then fine-tuning: the method trains on the pruning data's 10 identities,
    # the fine-tuning on cfg.data's 12 with a classifier of its own.
    trained = ["prune.finetune_epochs=1", "prune.options.finetune_steps=1", "prune.options.bins=4"]
    with pytest.warns(UserWarning, match="pruning data's training split has 10 identities"):
        report, ckpt = prune("trained", *trained, prune_data=_other_people(cfg, ids=10))
    assert ckpt["model_config"]["num_classes"] == 12 and ckpt["state_dict"]["classifier.weight"].shape[0] == 12
    assert report["finetune_steps_between_units"] > 0 and report["finetuned"] is not None
    # With cfg.data as the pruning data, training and fine-tuning included: still the run without it.
    _, plain_ckpt = prune("plain-trained", *trained)
    _, same_ckpt = prune("same-trained", *trained, prune_data=cfg.data)
    assert all(torch.equal(v, same_ckpt["state_dict"][k]) for k, v in plain_ckpt["state_dict"].items())


@pytest.mark.slow
def test_the_2x2_end_to_end(tmp_path, session_cache):
    # B has more training identities than A: each model's classifier shows which data it was fine-tuned on.
    bench = load_bench(TINY_BENCH, SMALL_BENCH + [
        "datasets={a: {synthetic: {ids: 8, test_ids: 4, images_per_camera: 2, seed: 0}}, "
        "b: {synthetic: {ids: 12, test_ids: 4, images_per_camera: 2, seed: 1}}}", "compare=[]",
        "methods=[{name: entropy, options: {finetune_steps: 0}}]", BOTH])
    summary = run_bench(bench, tmp_path / "bench", progress=False, log=lambda message: None)
    assert summary["complete"]
    cells = tmp_path / "bench" / "cells"
    for (pruned_on, finetune), cell in _pruned(plan_bench(bench), "Entropy").items():
        report = json.loads((cells / cell.key / "report.json").read_text())
        assert report["prune_data"] == ("synthetic" if pruned_on != finetune else None)
        ckpt = torch.load(cells / cell.key / "pruned.pt", weights_only=True)
        assert ckpt["model_config"]["num_classes"] == {"a": 8, "b": 12}[finetune], (pruned_on, finetune)
        # Pruned on B: the source's classifier gave way to one over B's identities before the pruning.
        assert (cells / cell.key / "start.pt").exists() == (pruned_on == "b")
    with open(tmp_path / "bench" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["name"], r["prune_data"], r["finetune"]) for r in rows] == [
        ("ResNet18", "", ""), (DENSE, "", "b"), ("Entropy", "a", "a"),
        ("Entropy (pruned on b, fine-tuned on a)", "b", "a"), ("Entropy (pruned on a, fine-tuned on b)", "a", "b"),
        ("Entropy", "b", "b")]
    assert "| Entropy (pruned on a, fine-tuned on b) | pruned on a, fine-tuned on b |" in (
        tmp_path / "bench" / "results.md").read_text()
