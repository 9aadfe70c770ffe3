"""curve.png: mAP against MACs kept per method, with 95% Student t bands over runs, checked by hand on synthetic rows."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from reid_prune.bench.plan import DENSE
from reid_prune.bench.plots import curve_data, curve_plot

T = 4.302652729749464  # t_{0.975, 2}: three runs per point
BENCH = SimpleNamespace(compare=["d"], cross_domain=[])


def _runs(label: str, kind: str, budget: str, mean: float, spread: float, kept: list[float]) -> list[dict]:
    """Three runs with mAPs mean - spread, mean, mean + spread: sample std = spread exactly."""
    return [{"scenario": "in_domain", "dataset": "d", "pretrain": "d", "finetune": "d", "label": label,
             "name": f"{label} @ {budget}" if budget else label, "kind": kind, "budget": budget, "seed": 0,
             "finetune_seed": i, "mAP": mean + (i - 1) * spread, "macs_kept": k} for i, k in enumerate(kept)]


def _rows() -> list[dict]:
    rows = [{"scenario": "in_domain", "dataset": "d", "pretrain": "d", "finetune": "", "label": "ResNet50",
             "name": "ResNet50", "kind": "baseline", "budget": "", "seed": 0, "finetune_seed": None, "mAP": 70.0,
             "macs_kept": 1.0}]
    rows += _runs(DENSE, "dense", "", 62.0, 0.5, [1.0] * 3)
    for budget, (haoli, fpgm) in {"0.7": ((60.0, 1.0), (58.0, 2.0)), "0.5": ((55.0, 2.0), (52.0, 1.0)),
                                  "0.3": ((45.0, 3.0), (40.0, 4.0))}.items():
        b = float(budget)
        rows += _runs("HaoLi", "pruned", budget, *haoli, [b] * 3)
        # FPGM at 0.3 kept 0.29, 0.30, 0.31 of the MACs: its point is at their mean, 0.30.
        rows += _runs("FPGM", "pruned", budget, *fpgm, [b - 0.01, b, b + 0.01] if budget == "0.3" else [b] * 3)
    rows.append({**_runs("Random", "pruned", "0.5", 30.0, 0.0, [0.5])[0]})  # one run: no band
    return rows


def _band(mean: float, spread: float) -> tuple[float, float]:
    half = T * spread / math.sqrt(3)  # t_{0.975,2} * s / sqrt(n)
    return mean - half, mean + half


def test_curve_data_means_and_t_intervals_by_hand():
    data = curve_data(_rows())
    assert list(data) == [DENSE, "HaoLi", "FPGM", "Random"]  # baselines are left out
    dense_low, dense_high = _band(62.0, 0.5)
    assert data[DENSE]["xs"] == [1.0] and data[DENSE]["means"] == [62.0]
    assert data[DENSE]["lows"] == [pytest.approx(dense_low)] and data[DENSE]["highs"] == [pytest.approx(dense_high)]
    # Each method's points sorted by MACs kept, ending at the dense reference (1.0): every curve meets there.
    for label, points in {"HaoLi": [(0.3, 45.0, 3.0), (0.5, 55.0, 2.0), (0.7, 60.0, 1.0), (1.0, 62.0, 0.5)],
                          "FPGM": [(0.3, 40.0, 4.0), (0.5, 52.0, 1.0), (0.7, 58.0, 2.0), (1.0, 62.0, 0.5)]}.items():
        assert data[label]["xs"] == pytest.approx([x for x, _, _ in points])
        assert data[label]["means"] == pytest.approx([m for _, m, _ in points])
        assert data[label]["lows"] == pytest.approx([_band(m, s)[0] for _, m, s in points])
        assert data[label]["highs"] == pytest.approx([_band(m, s)[1] for _, m, s in points])
    # HaoLi at 0.3: 45 ± 4.302652729749464 * 3 / sqrt(3) = 45 ± 7.452413 (so 37.547587 to 52.452413)
    assert data["HaoLi"]["lows"][0] == pytest.approx(37.547587, abs=1e-6)
    assert data["Random"] == {"xs": [0.5, 1.0], "means": [30.0, 62.0], "lows": [None, pytest.approx(dense_low)],
                              "highs": [None, pytest.approx(dense_high)]}


def test_curve_png_is_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    assert curve_plot(BENCH, _rows(), tmp_path / "curve.png") is True
    assert (tmp_path / "curve.png").stat().st_size > 0
    # One budget and no dense reference: no curve to draw.
    single = [r for r in _rows() if r["budget"] == "0.5" or r["kind"] == "baseline"]
    assert curve_plot(BENCH, single, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_curve_without_matplotlib_says_so(tmp_path, monkeypatch):
    from reid_prune.bench import plots

    monkeypatch.setattr(plots, "new_figure", lambda width, height: None)
    assert curve_plot(BENCH, _rows(), tmp_path / "curve.png") is False
    assert not (tmp_path / "curve.png").exists()
