"""Fixes from a hostile sweep: each bad input stops with one line naming it and the fix, before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO, TINY_RUN
from reid_prune.cli import main


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reid-prune {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_resume_and_plot_name_a_metrics_folder(tiny_run, cache_at, tmp_path, capsys):
    """A. metrics.jsonl replaced by a folder: resume crashed mid-run (IsADirectoryError), plot said 'does not exist'."""
    cache_at(tiny_run / "cache")
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    before = sorted(p.name for p in run.iterdir())
    stamp = (run / "last.pt").stat().st_mtime_ns
    # The run's own config, one more epoch: everything else about the resume is valid.
    args = ["train", "--config", str(run / "config.yaml"), "--quiet", "--output", str(run), "--resume",
            "--set=train.epochs=2"]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"{run / 'metrics.jsonl'} is a folder" in line and "move or delete it" in line
    assert sorted(p.name for p in run.iterdir()) == before and (run / "last.pt").stat().st_mtime_ns == stamp
    assert main(["plot", str(run), "--output", str(tmp_path / "curves.png")]) == 2
    line = _one_error_line(capsys.readouterr().err, "plot")
    assert f"{run / 'metrics.jsonl'} is a folder" in line and "does not exist" not in line
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("text", ["", "# rates to come\n"])
def test_an_empty_layer_rates_file_is_named_not_the_config(tmp_path, capsys, text):
    """E. An empty --layer-rates file said 'see configs/demo.yaml' (the --config), which holds no layer rates."""
    rates = tmp_path / "rates.yaml"
    rates.write_text(text)
    out = tmp_path / "pruned"
    assert main(["prune", "--config", str(REPO / "configs" / "demo.yaml"), "--checkpoint", str(tmp_path / "none.pt"),
                 "--method", "haoli", "--layer-rates", str(rates), "--output", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "prune")
    assert f"--layer-rates file {str(rates)!r} is empty" in line and "layer1.0.conv1: 0.3" in line
    assert "demo.yaml" not in line and not out.exists()
