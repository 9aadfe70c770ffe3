"""scripts/bench_latency_ratios.py on hand-made results.csv files: the ratios and pass factors by hand."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "bench_latency_ratios.py"
COLUMNS = ["name", "kind", "arch", "cell", "latency_ms_batch1", "latency_ms_batch32"]


def _script():
    spec = importlib.util.spec_from_file_location("bench_latency_ratios", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


def test_ratios_over_the_baseline_and_factors_between_passes(tmp_path, capsys):
    this = _write(tmp_path / "a.csv", [["ResNet18", "baseline", "resnet18", "b", "20", "4"],
                                       ["HaoLi @ 0.5", "pruned", "resnet18", "h0", "10", "2"],
                                       ["HaoLi @ 0.5", "pruned", "resnet18", "h1", "14", "3"]])
    other = _write(tmp_path / "b.csv", [["ResNet18", "baseline", "resnet18", "b", "25", "4"],
                                        ["HaoLi @ 0.5", "pruned", "resnet18", "h0", "8", "2"],
                                        ["HaoLi @ 0.5", "pruned", "resnet18", "h1", "14", "4"]])
    assert _script().main([str(this), "--other", str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # 10/20 = 0.5 and 14/20 = 0.7: mean 0.6; 2/4 = 0.5 and 3/4 = 0.75: mean 0.625, printed 0.62 (round half even).
    assert lines[0].split() == ["HaoLi", "@", "0.5", "batch1", "0.60", "(0.50-0.70)", "batch32", "0.62",
                                "(0.50-0.75)"]
    # Per cell this / other: batch 1: 20/25 = 0.8, 10/8 = 1.25, 14/14 = 1: median 1; batch 32: 1, 1, 0.75.
    assert lines[1] == "batch1: this pass / other over 3 models: median 1.000, min 0.800, max 1.250"
    assert lines[2] == "batch32: this pass / other over 3 models: median 1.000, min 0.750, max 1.000"


def test_a_file_without_a_baseline_stops_with_exit_2(tmp_path, capsys):
    path = _write(tmp_path / "a.csv", [["HaoLi @ 0.5", "pruned", "resnet18", "h0", "10", "2"]])
    assert _script().main([str(path)]) == 2
    assert "no baseline row" in capsys.readouterr().err
    assert _script().main([str(tmp_path / "missing.csv")]) == 2


@pytest.mark.skipif(not (REPO / "docs/results/cuhk03_methods_cpu/results.csv").is_file(), reason="no committed run")
def test_the_committed_run_gives_the_quoted_ratios(capsys):
    assert _script().main([str(REPO / "docs/results/cuhk03_methods_cpu/results.csv")]) == 0
    out = capsys.readouterr().out
    assert "HaoLi (internal) @ 0.5               batch1 0.66 (0.65-0.67)  batch32 0.59 (0.57-0.61)" in out
