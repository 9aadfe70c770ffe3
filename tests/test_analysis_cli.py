"""`reid-prune visrank`, `sensitivity`, `plot` and prune's widths.png end to end on synthetic data, and their errors."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import TINY_RUN, use_cache
from reid_prune import load_model
from reid_prune.analysis.plotting import INSTALL_HINT
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.data import build_dataset
from reid_prune.jobs.train import train
from reid_prune.jobs.wiring import synthetic_root
from reid_prune.evaluation.visrank import BORDER, CAPTION, GAP, MATCH_COLOUR, MISMATCH_COLOUR

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_RUN + ["train.warmup_epochs=0", "eval.latency_batch_sizes=[1]", "train.max_batches=3"]
SET = [f"--set={o}" for o in TINY]
CONFIG = str(REPO / "configs" / "demo.yaml")
# scripts/test.sh (CI) installs the plot extra; elsewhere the pictures' checks become checks of their absence.
HAS_PLOT = importlib.util.find_spec("matplotlib") is not None
needs_plot = pytest.mark.skipif(not HAS_PLOT, reason="the plot extra (matplotlib) is not installed")


@pytest.fixture
def cache(tiny_run, cache_at):
    """The session's tiny run (ROOT/run/best.pt), with the cache on its generated dataset."""
    cache_at(tiny_run / "cache")
    return tiny_run


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """ROOT of a run of 2 epochs, each evaluated, for the learning curves.

    tiny_run will not do there: it trains 1 epoch, so its metrics.jsonl and curve hold a single point, and the
    row-by-row comparison of the curve's table with metrics.jsonl would check one epoch only.
    """
    root = tmp_path_factory.mktemp("analysis_cli")
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, root / "cache")
        train(load_config(None, TINY + ["train.epochs=2", "train.eval_every=1"]), output=root / "run", progress=False)
    return root


def no_matplotlib(monkeypatch):
    # A None entry in sys.modules makes `import matplotlib...` raise ImportError.
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)


def test_visrank_borders_match_the_dataset_identities(cache, tmp_path, capsys):
    out = tmp_path / "visrank"
    assert main(["visrank", "--config", CONFIG, "--quiet", "--checkpoint", str(cache / "run" / "best.pt"), *SET,
                 "--queries", "3", "--topk", "4", "--seed", "1", "--output", str(out)]) == 0, capsys.readouterr().err
    record = json.loads((out / "visrank.json").read_text())
    dataset = build_dataset("market_layout", synthetic_root(load_config(CONFIG, TINY).data))
    height, width = 64, 32  # data.height, data.width of TINY_RUN
    row = (GAP + 5 * (width + 2 * BORDER + GAP), GAP + height + 2 * BORDER + CAPTION + GAP)
    assert len(record["queries"]) == 3
    for q in record["queries"]:
        sample = dataset.query[q["index"]]
        assert (q["path"], q["pid"]) == (sample.path, sample.pid)
        image = Image.open(out / q["image"]).convert("RGB")
        assert image.size == row
        assert [m["rank"] for m in q["matches"]] == [1, 2, 3, 4]
        for m in q["matches"]:
            truth = next(g for g in dataset.gallery if g.path == m["path"])
            assert not (truth.pid == sample.pid and truth.camid == sample.camid)  # the protocol's exclusion
            colour = MATCH_COLOUR if truth.pid == sample.pid else MISMATCH_COLOUR
            assert image.getpixel((GAP + m["rank"] * (width + 2 * BORDER + GAP) + 1, GAP + 1)) == colour
    assert Image.open(out / "summary.png").size == (row[0], 3 * row[1])
    # The same seed draws the same queries.
    again = tmp_path / "again"
    assert main(["visrank", "--config", CONFIG, "--quiet", "--checkpoint", str(cache / "run" / "best.pt"), *SET,
                 "--queries", "3", "--topk", "4", "--seed", "1", "--output", str(again)]) == 0
    assert [q["index"] for q in json.loads((again / "visrank.json").read_text())["queries"]] == \
        [q["index"] for q in record["queries"]]


@pytest.mark.slow
def test_sensitivity_rates_are_accepted_by_prune_and_meet_the_target(cache, tmp_path, capsys):
    out = tmp_path / "sens"
    args = ["sensitivity", "--config", CONFIG, "--quiet", "--checkpoint", str(cache / "run" / "best.pt"), *SET,
            "--method", "haoli", "--scope", "all", "--rates", "0.5,0.9", "--target-macs", "0.6", "--output", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    with open(out / "sensitivity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["group", "kind", "stage", "channels", "rate", "kept", "macs_fraction", "mAP", "rank1",
                             "mAP_drop"]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    # ResNet-18, scope all without the last stage: conv1 of its 8 blocks and 3 streams.
    assert len(groups) == 11 and len(rows) == 22
    assert {float(r["rate"]) for r in rows} == {0.5, 0.9}
    layer4 = next(r for r in rows if r["group"] == "layer4.0.conv1" and r["rate"] == "0.9")
    assert (layer4["channels"], layer4["kept"]) == ("512", str(512 // 10))  # floor(512 x (1 - 0.9)) = 51
    if HAS_PLOT:  # 5 panels (layer1..layer4 and the streams), 3 a row: 3 x 4.5 by 2 x 3.6 inches at 100 dpi.
        assert Image.open(out / "sensitivity.png").size == (1350, 720)
    else:
        assert not (out / "sensitivity.png").exists()
    rates = yaml.safe_load((out / "layer_rates.yaml").read_text())
    assert list(rates) == groups

    pruned = tmp_path / "pruned"
    assert main(["prune", "--config", CONFIG, "--quiet", "--checkpoint", str(cache / "run" / "best.pt"), *SET,
                 "--method", "haoli", "--scope", "all", "--layer-rates", str(out / "layer_rates.yaml"),
                 "--output", str(pruned)]) == 0, capsys.readouterr().err
    report = json.loads((pruned / "report.json").read_text())
    assert report["layer_rates"] == rates
    assert abs(report["pruned"]["macs"] / report["before"]["macs"] - 0.6) <= 0.02
    if HAS_PLOT:  # 12 groups (the last stage's stream too) -> max(6, 0.45 * 12 + 1.5) x 4.5 inches at 100 dpi.
        assert Image.open(pruned / "widths.png").size == (690, 450)
    assert report["widths_plot"] == HAS_PLOT
    model = load_model(pruned / "pruned.pt")
    widths = {w["group"]: w for w in report["widths"]}
    assert len(widths) == 12
    for name in ("layer4.0.conv1", "layer2.1.conv1"):
        assert widths[name]["kept"] == model.get_submodule(name).out_channels
        # the rounding rule, floor(C (1 - rate)), with the rate as the decimal written in the YAML
        assert widths[name]["kept"] == math.floor(widths[name]["channels"] * (1 - Fraction(str(rates[name]))))


@needs_plot
def test_learning_curves_of_one_and_several_runs(two_epochs, cache_at, tmp_path, capsys):
    cache_at(two_epochs / "cache")
    run = two_epochs / "run"
    out = tmp_path / "curves.png"
    assert main(["plot", str(run), "--output", str(out)]) == 0, capsys.readouterr().err
    assert Image.open(out).size == (1500, 400)  # 15 x 4 inches at 100 dpi
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2  # a curve of two evaluated epochs, not a single point
    with open(tmp_path / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["run", "epoch", "loss", "lr", "mAP", "rank1"]
    assert [(int(r["epoch"]), float(r["loss"]), float(r["mAP"])) for r in rows] == \
        [(rec["epoch"], rec["loss"], rec["mAP"]) for rec in records]  # metrics.jsonl counts epochs from 1
    # Several runs overlaid: the same run twice gets two labels, and the picture needs a place.
    assert main(["plot", str(run), str(run), "--output", str(tmp_path / "two.png")]) == 0
    with open(tmp_path / "two.csv") as fh:
        assert len({r["run"] for r in csv.DictReader(fh)}) == 2
    assert Image.open(tmp_path / "two.png").size == (1500, 400)
    assert main(["plot", str(run), str(run)]) == 2
    assert "say where with --output" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nowhere"), "--output", str(tmp_path / "none.png")]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "none.csv").exists()


def test_without_matplotlib_tables_are_written_and_the_fix_is_named(cache, tmp_path, capsys, monkeypatch):
    no_matplotlib(monkeypatch)
    pruned = tmp_path / "pruned"
    assert main(["prune", "--config", CONFIG, "--quiet", "--checkpoint", str(cache / "run" / "best.pt"), *SET,
                 "--method", "haoli", "--rate", "0.3", "--output", str(pruned)]) == 0
    assert INSTALL_HINT in capsys.readouterr().out
    report = json.loads((pruned / "report.json").read_text())
    assert report["widths_plot"] is False and report["widths"] and not (pruned / "widths.png").exists()
    assert main(["plot", str(cache / "run"), "--output", str(tmp_path / "c.png")]) == 2
    assert INSTALL_HINT in capsys.readouterr().err
    assert (tmp_path / "c.csv").is_file() and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "command, extra, message",
    [
        ("sensitivity", ["--method", "psfp"], "prunes during training"),
        ("sensitivity", ["--method", "haoli", "--rates", "0.1", "--target-macs", "0.2"], "cannot be met"),
        ("sensitivity", ["--method", "haoli", "--rates", "0.5,1.0"], "--rates: each rate must lie in (0, 1), got 1"),
        ("sensitivity", ["--method", "haoli", "--rates", "0.3,,0.5"], "--rates: expected comma-separated fractions"),
        ("sensitivity", ["--method", "haoli", "--rates", "0.5,0.5"], "--rates: a rate is given twice"),
        ("sensitivity", ["--method", "haoli", "--option", "greedy"], "--option 'greedy': expected KEY=VALUE"),
        ("sensitivity", ["--method", "haoli", "--seed", "-5"], "--seed: must be >= 0, got -5"),
        ("visrank", ["--query-ids", "9999"], "person ids [9999] have no query image"),
        ("visrank", ["--topk", "0"], "--topk: must be >= 1, got 0"),
    ],
)
def test_errors_are_clear_and_write_nothing(cache, tmp_path, capsys, command, extra, message):
    out = tmp_path / "out"
    try:
        code = main([command, "--config", CONFIG, "--quiet", "--checkpoint", str(cache / "run" / "best.pt"), *SET,
                     *extra, "--output", str(out)])
    except SystemExit as exit_:  # a bad flag value: argparse names the flag and exits
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("layer1.0.conv1: 1.5\n", "config key prune.layer_rates.layer1.0.conv1: a prune fraction must lie in [0, 1)"),
        ("layer9.conv1: 0.3\n", "layer_rates names unknown groups ['layer9.conv1']"),
        ("[0.3, 0.5]\n", "expected a mapping of group name to prune rate"),
    ],
)
def test_bad_layer_rates_files_are_refused(cache, tmp_path, capsys, content, message):
    rates = tmp_path / "rates.yaml"
    rates.write_text(content)
    out = tmp_path / "out"
    assert main(["prune", "--config", CONFIG, "--quiet", "--checkpoint", str(cache / "run" / "best.pt"), *SET,
                 "--method", "haoli", "--layer-rates", str(rates), "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
