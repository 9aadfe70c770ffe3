"""The bench's latency ratio to the source model, with a fake timer: interleaved rounds, median and range by hand, cache.

Cells: the source S (the trained prune_arch baseline), A pruned from S, B trained from scratch
at A's widths (its source is S, reached through A). Each round times S then A, then S then B.
The fake timer returns, per model, its next number from a list (batch 32; batch 1 is three
times that), so every ratio below is computed by hand from these lists.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from reid_prune.bench import latency as bench_latency
from reid_prune.bench.latency import LATENCY_ROUNDS, cell_latencies, ratio_batch, source_cell
from reid_prune.bench.plan import Cell
from reid_prune.bench.tables import summarize

CFG = SimpleNamespace(data=SimpleNamespace(height=8, width=4))
S = Cell("train-S", "train", CFG, "d", "d", 0, "resnet50", "ResNet50")
A = Cell("prune-A", "prune", CFG, "d", "d", 0, "resnet50", "HaoLi", budget="0.5", parent=S)
B = Cell("scratch-B", "scratch", CFG, "d", "d", 0, "resnet50", "Scratch", budget="0.5", parent=A)
CELLS = [S, A, B]

# Milliseconds per image at batch 32, one number per call. S is timed twice per round: before A, then before B.
S_MS = [10, 20, 20, 10, 8, 16, 16, 8, 40, 5]
A_MS = [6, 10, 2, 12, 30]  # / S's [10, 20, 8, 16, 40] = 0.6, 0.5, 0.25, 0.75, 0.75
B_MS = [5, 7, 4, 6, 4]  # / S's [20, 10, 16, 8, 5] = 0.25, 0.7, 0.25, 0.75, 0.8
# By hand: A's ratios sorted 0.25, 0.5, 0.6, 0.75, 0.75: median 0.6 (mean 0.57; ratio of the medians 10 / 16 = 0.625);
# B's sorted 0.25, 0.25, 0.7, 0.75, 0.8: median 0.7 (mean 0.55; median over S's calls before A instead: 0.375).
A_RATIO = {"median": 0.6, "min": 0.25, "max": 0.75}
B_RATIO = {"median": 0.7, "min": 0.25, "max": 0.8}
# Latency: the median of a model's own timings: A 10, B 5, S over its ten calls (10 + 16) / 2 = 13.
MS = {"train-S": 13.0, "prune-A": 10.0, "scratch-B": 5.0}


class FakeTimer:
    """Stands in for measure_latency: records the order of the calls, returns each model's next number."""

    def __init__(self, numbers: dict[str, list[float]]):
        self.numbers = {key: list(values) for key, values in numbers.items()}
        self.calls: list[str] = []

    def __call__(self, model, size, *, batch_sizes, device, warmup, repeats, precision, channels_last):
        assert size == (8, 4) and device == "cpu" and repeats >= 1
        self.calls.append(model)
        ms = self.numbers[model].pop(0)
        return {f"batch{b}": (3 * ms if b == 1 else ms) for b in batch_sizes}


def forbidden(*args, **kwargs):
    raise AssertionError("a cached latency must not be timed again")


@pytest.fixture
def fake(monkeypatch):
    # A "model" is its cell's key: the fake loader reads it from the checkpoint's folder.
    monkeypatch.setattr(bench_latency, "cell_checkpoint", lambda cell, folder: Path(folder) / "model.pt")
    monkeypatch.setattr(bench_latency, "load_model", lambda path: Path(path).parent.name)

    def install(numbers):
        timer = FakeTimer(numbers)
        monkeypatch.setattr(bench_latency, "measure_latency", timer)
        return timer

    return install


def _measure(tmp_path, **kwargs):
    return cell_latencies(CELLS, tmp_path, [1, 32], 1, prune_arch="resnet50", **kwargs)


def test_source_is_the_trained_prune_arch_model_up_the_parent_chain():
    r18 = Cell("train-R18", "train", CFG, "d", "d", 0, "resnet18", "ResNet18")
    other_seed = Cell("train-S1", "train", CFG, "d", "d", 1, "resnet50", "ResNet50")
    cells = [S, other_seed, r18, A, B]
    assert source_cell(B, cells, "resnet50") is S and source_cell(A, cells, "resnet50") is S
    assert source_cell(S, cells, "resnet50") is S and source_cell(r18, cells, "resnet50") is S
    assert ratio_batch([1, 32]) == 32 and ratio_batch([1, 8]) == 8 and ratio_batch([]) is None


def test_ratio_is_the_median_of_per_round_ratios_with_min_and_max(fake, tmp_path):
    timer = fake({"train-S": S_MS, "prune-A": A_MS, "scratch-B": B_MS})
    columns = _measure(tmp_path)
    # Interleaved: in every round each cell is timed right after its source, LATENCY_ROUNDS (>= 3) rounds.
    assert LATENCY_ROUNDS >= 3
    assert timer.calls == ["train-S", "prune-A", "train-S", "scratch-B"] * LATENCY_ROUNDS
    for key, ratio in (("prune-A", A_RATIO), ("scratch-B", B_RATIO)):
        for batch in ("batch1", "batch32"):  # batch 1 is 3x batch 32 for every model: the same ratios
            assert columns[key][f"latency_ratio_{batch}"] == pytest.approx(ratio["median"])
            assert columns[key][f"latency_ratio_{batch}_min"] == pytest.approx(ratio["min"])
            assert columns[key][f"latency_ratio_{batch}_max"] == pytest.approx(ratio["max"])
    for key, ms in MS.items():
        assert columns[key]["latency_ms_batch32"] == pytest.approx(ms)
        assert columns[key]["latency_ms_batch1"] == pytest.approx(3 * ms)
    # The source against itself: 1, not timed as a pair.
    assert {k: v for k, v in columns["train-S"].items() if "ratio" in k} == {
        f"latency_ratio_batch{b}{s}": 1.0 for b in (1, 32) for s in ("", "_min", "_max")}
    # The cache holds every round's ratio and the setting that defines the measurement.
    cached = json.loads((tmp_path / "prune-A" / "latency.json").read_text())
    assert cached["ratio"]["batch32"]["rounds"] == pytest.approx([0.6, 0.5, 0.25, 0.75, 0.75])
    assert cached["setting"]["rounds"] == LATENCY_ROUNDS and cached["setting"]["source"] == "train-S"
    assert {"batches", "threads", "precision", "memory_format", "warmup", "repeats"} <= set(cached["setting"])


def test_fewer_than_three_rounds_are_refused_and_three_are_used(fake, tmp_path):
    with pytest.raises(ValueError, match="at least 3 rounds"):
        _measure(tmp_path, rounds=2)
    timer = fake({"train-S": S_MS[:6], "prune-A": A_MS[:3], "scratch-B": B_MS[:3]})
    columns = _measure(tmp_path, rounds=3)
    assert timer.calls == ["train-S", "prune-A", "train-S", "scratch-B"] * 3
    # A: 0.6, 0.5, 0.25 -> median 0.5; B: 0.25, 0.7, 0.25 -> median 0.25, max 0.7.
    assert columns["prune-A"]["latency_ratio_batch32"] == pytest.approx(0.5)
    assert columns["scratch-B"]["latency_ratio_batch32"] == pytest.approx(0.25)
    assert columns["scratch-B"]["latency_ratio_batch32_max"] == pytest.approx(0.7)


def test_cache_is_reused_only_for_the_same_setting(fake, tmp_path, monkeypatch):
    fake({"train-S": S_MS, "prune-A": A_MS, "scratch-B": B_MS})
    first = _measure(tmp_path)
    source_file = (tmp_path / "train-S" / "latency.json").read_text()
    # 1. Same setting: nothing is timed, the same numbers come back.
    monkeypatch.setattr(bench_latency, "measure_latency", forbidden)
    assert _measure(tmp_path) == first
    # 2. One cell's cache gone: it is timed again right after its source; the source keeps its cached numbers.
    (tmp_path / "prune-A" / "latency.json").unlink()
    timer = fake({"train-S": [10, 20, 20, 10, 10], "prune-A": [5, 5, 5, 4, 6]})
    again = _measure(tmp_path)
    assert timer.calls == ["train-S", "prune-A"] * LATENCY_ROUNDS
    # 5/10, 5/20, 5/20, 4/10, 6/10 = 0.5, 0.25, 0.25, 0.4, 0.6: sorted 0.25, 0.25, 0.4, 0.5, 0.6, median 0.4.
    assert again["prune-A"]["latency_ratio_batch32"] == pytest.approx(0.4)
    assert again["prune-A"]["latency_ratio_batch32_min"] == pytest.approx(0.25)
    assert again["prune-A"]["latency_ratio_batch32_max"] == pytest.approx(0.6)
    assert again["train-S"] == first["train-S"] and again["scratch-B"] == first["scratch-B"]
    assert (tmp_path / "train-S" / "latency.json").read_text() == source_file
    # 3. A cache of another setting is not reused. B's cache names another source model: B is timed anew.
    path = tmp_path / "scratch-B" / "latency.json"
    cached = json.loads(path.read_text())
    cached["setting"]["source"] = "train-other"
    path.write_text(json.dumps(cached))
    timer = fake({"train-S": [1.0] * 5, "scratch-B": [0.25] * 5})
    assert _measure(tmp_path)["scratch-B"]["latency_ratio_batch32"] == pytest.approx(0.25)
    assert timer.calls == ["train-S", "scratch-B"] * LATENCY_ROUNDS
    # Other rounds, then other threads: every model is timed anew.
    for threads in (1, 2):
        timer = fake({"train-S": [1.0] * 8, "prune-A": [0.5] * 4, "scratch-B": [0.2] * 4})
        columns = cell_latencies(CELLS, tmp_path, [1, 32], threads, prune_arch="resnet50", rounds=4)
        assert timer.calls == ["train-S", "prune-A", "train-S", "scratch-B"] * 4
        assert columns["scratch-B"]["latency_ratio_batch32"] == pytest.approx(0.2)
        assert columns["prune-A"]["latency_ratio_batch32"] == pytest.approx(0.5)


def test_groups_carry_the_mean_ratio_over_runs():
    base = {"scenario": "in_domain", "dataset": "d", "pretrain": "d", "finetune": "d", "name": "HaoLi", "label": "HaoLi",
            "kind": "pruned", "method": "haoli", "budget": "0.5", "seed": 0, "rank1": 1.0, "mINP": 1.0,
            "params": 1, "macs": 1, "macs_kept": 0.5, "prune_seconds": 1.0, "latency_ms_batch32": 2.0}
    runs = [{**base, "finetune_seed": s, "mAP": 50.0 + s, "latency_ratio_batch32": r, "latency_ratio_batch32_min": lo,
             "latency_ratio_batch32_max": hi} for s, (r, lo, hi) in enumerate([(0.6, 0.5, 0.7), (0.4, 0.3, 0.9)])]
    group = summarize(runs)[0]
    assert group["latency_ratio_batch32"] == pytest.approx(0.5)
    assert group["latency_ratio_batch32_min"] == pytest.approx(0.4)
    assert group["latency_ratio_batch32_max"] == pytest.approx(0.8)


def _group(label: str, kind: str, budget: str, mAP: float, macs: float, batch: int, ratio: tuple[float, float, float]):
    median, low, high = ratio
    return {"scenario": "in_domain", "dataset": "d", "pretrain": "d", "finetune": "d", "label": label,
            "name": label, "kind": kind, "budget": budget, "mAP": mAP, "mAP_std": 1.0, "macs": macs,
            f"latency_ratio_batch{batch}": median, f"latency_ratio_batch{batch}_min": low,
            f"latency_ratio_batch{batch}_max": high, f"latency_ratio_batch{batch}_std": 0.01}


@pytest.mark.parametrize("batches, batch", [([1, 32], 32), ([1, 8], 8)])
def test_pareto_latency_panel_plots_map_against_the_ratio(monkeypatch, batches, batch):
    pytest.importorskip("matplotlib")
    from reid_prune.bench import plots

    drawn = {}
    monkeypatch.setattr(plots, "latency_batch_sizes", lambda bench: batches)
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.setdefault("figure", figure))
    groups = [_group("ResNet50", "baseline", "", 70.0, 2e9, batch, (1.0, 1.0, 1.0)),
              _group("HaoLi", "pruned", "0.5", 60.0, 1e9, batch, (0.6, 0.25, 0.75))]
    assert plots.pareto_plot(SimpleNamespace(compare=["d"], cross_domain=[]), groups, Path("unused.png")) is True
    _, latency_ax = drawn["figure"].axes[:2]
    # Batch 32 when timed, else the largest batch timed; the label says what the axis is.
    assert f"batch {batch}" in latency_ax.get_xlabel() and "source" in latency_ax.get_xlabel()
    points = {tuple(c.lines[0].get_xydata()[0]): c for c in latency_ax.containers}
    assert set(points) == {(1.0, 70.0), (0.6, 60.0)}
    # HaoLi's horizontal bar spans its min-max ratio, 0.25 to 0.75.
    bar = points[(0.6, 60.0)].lines[2][0].get_segments()[0]
    assert [x for x, _ in bar] == pytest.approx([0.25, 0.75])
