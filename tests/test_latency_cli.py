"""`reid-prune prune --target-latency`: the report, an unreachable target, and config/CLI validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_RUN
from reid_prune.cli import build_parser, main
from reid_prune.config import ConfigError, load_config
from reid_prune.pruners import latency, latency_table

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_RUN + ["train.warmup_epochs=0", "train.max_batches=2", "eval.latency_batch_sizes=[1]"]


@pytest.fixture
def fake_table(monkeypatch, cache_at, tiny_run, tmp_path):
    """Instant, deterministic table timings (MACs-like) in a folder of their own, away from real ones.

    The feedback step and the report still time the real models (tiny ones).
    """
    cache_at(tiny_run / "cache")  # the generated dataset
    monkeypatch.setattr(latency, "cache_folder", lambda: tmp_path / "latency")
    monkeypatch.setattr(latency_table, "time_op", lambda sig, c_in, c_out, setting: 1e-4 * c_in * c_out + 0.01)
    monkeypatch.setattr(latency, "measure_latency", lambda model, size, *, batch_sizes, **k: {
        f"batch{b}": 1.0 for b in batch_sizes})  # below the layer sum: predictions are its fractions
    return tiny_run


def _args(run: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--checkpoint",
            str(run / "run" / "best.pt"), *[f"--set={o}" for o in TINY], "--method", "haoli",
            "--output", str(out), *extra]


def test_latency_target_reports_the_ratio_measured_after_surgery(fake_table, tmp_path, capsys):
    out = tmp_path / "lat"
    assert main(_args(fake_table, out, "--target-latency", "0.6", "--set=prune.latency_feedback=1")) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["target_latency"] == 0.6 and report["scope"] == "all"  # auto: a budget cuts the streams too
    achieved = report["achieved"]
    assert set(achieved["latency_ratio"]) == {"batch1"}
    assert achieved["latency_ratio_mean"] == achieved["latency_ratio"]["batch1"] > 0
    assert achieved["macs_ratio"] == pytest.approx(report["pruned"]["macs"] / report["before"]["macs"])
    budget = report["latency_budget"]
    assert budget["batch_sizes"] == [1] and len(budget["feedback"]) == 1 and budget["setting"]["device"] == "cpu"
    assert f"target: latency 0.6; kept: MACs {achieved['macs_ratio']:.3f}" in printed
    assert f"latency {achieved['latency_ratio_mean']:.3f} measured after surgery (batch1 " in printed


def test_every_prune_report_has_the_achieved_ratios(fake_table, tmp_path, capsys):
    out = tmp_path / "rate"
    assert main(_args(fake_table, out, "--rate", "0.3")) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scope"] == "internal"  # auto with a rate
    assert set(report["achieved"]["latency_ratio"]) == {"batch1"} and "latency_budget" not in report
    assert "target: rate 0.3; kept: MACs" in capsys.readouterr().out


def test_an_unreachable_latency_target_stops_before_any_file(fake_table, tmp_path, capsys):
    out = tmp_path / "never"
    code = main(_args(fake_table, out, "--target-latency", "0.02", "--scope", "internal"))
    err = capsys.readouterr().err
    assert code == 2
    assert "latency budget of 0.02 cannot be met" in err and "scope=all" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("override, message", [
    ("prune.target_latency=0", "config key prune.target_latency: a kept fraction must lie in (0, 1], got 0"),
    ("prune.target_latency=1.5", "config key prune.target_latency: a kept fraction must lie in (0, 1], got 1.5"),
    ("prune.latency_batch_sizes=[]", "config key prune.latency_batch_sizes: give at least one batch size"),
    ("prune.latency_batch_sizes=[0, 32]", "config key prune.latency_batch_sizes[0]: must be >= 1, got 0"),
    ("prune.latency_threads=0", "config key prune.latency_threads: must be >= 1, got 0"),
    ("prune.latency_feedback=-1", "config key prune.latency_feedback: must be >= 0, got -1"),
    ("prune.scope=everything", "config key prune.scope: expected one of auto, internal, all, got 'everything'"),
])
def test_latency_config_keys_are_checked(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_latency_flags(tmp_path, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["prune", "--config", "c.yaml", "--checkpoint", "x.pt", "--target-latency", "0.5",
                           "--target-macs", "0.5"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    args = parser.parse_args(["prune", "--config", "c.yaml", "--checkpoint", "x.pt", "--target-latency", "0.5",
                              "--latency-batch-sizes", "1", "8"])
    from reid_prune.commands.common import load_run_config
    from reid_prune.commands.prune import prune_flags

    flags = {key: value for group in prune_flags(args) for key, value in group.items()}
    assert flags["prune.target_latency"] == 0.5 and flags["prune.latency_batch_sizes"] == [1, 8]
    args.config = None  # the defaults, then the flags
    assert load_run_config(args, *prune_flags(args)).prune.latency_batch_sizes == [1, 8]
    help_text = build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    assert "--target-latency" in help_text and "(prune.scope auto)" in help_text


def test_latency_settings_without_a_latency_target_are_refused():
    from reid_prune.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="prune.latency_batch_sizes: applies to a latency target only"):
        load_config(None, ["prune.rate=0.3", "prune.latency_batch_sizes=[4]"])
