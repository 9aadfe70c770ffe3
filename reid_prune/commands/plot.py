"""``reid-prune plot``: draw learning curves (loss, learning rate, mAP) of one or several runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..analysis.plotting import missing_note

NAME = "plot"
SUMMARY = "draw learning curves (loss, learning rate, mAP) of one or several runs"
DESCRIPTION = """\
Reads metrics.jsonl of each training run folder and draws loss, learning rate
(log scale) and mAP against the epoch, runs overlaid, into curves.png (default:
inside the one run's folder; give --output for several runs), replacing an
older picture. The numbers go beside it as curves.csv. Needs the plot extra:
pip install -e '.[plot]' in this repository, or bash scripts/setup.sh plot.

examples:
  reid-prune plot runs/demo
  reid-prune plot runs/cuhk03_r18 runs/cuhk03_r18_s1 --output runs/seeds.png
"""
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = False, False, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run folders holding metrics.jsonl")
    parser.add_argument("--output", metavar="FILE.png", help="the picture (default: RUN_DIR/curves.png for one "
                        "run); the numbers go beside it as FILE.csv")


def run(args: argparse.Namespace) -> int:
    from ..analysis.curves import curve_rows, plot_learning_curves, read_metrics, run_labels, write_curves_csv

    if len(args.runs) > 1 and not args.output:
        raise ValueError(f"{len(args.runs)} runs are overlaid in one picture: say where with --output FILE.png")
    output = Path(args.output or Path(args.runs[0]) / "curves.png")
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output: the picture is a PNG; give a name ending in .png, got {str(output)!r}")
    runs = {label: read_metrics(run) for label, run in zip(run_labels(args.runs), args.runs)}
    rows = curve_rows(runs)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_curves_csv(rows, output.with_suffix(".csv"))
    if not plot_learning_curves(rows, output):
        print(f"reid-prune plot: error: {missing_note(output.name)}; wrote {output.with_suffix('.csv')}",
              file=sys.stderr)
        return 2
    print(f"wrote {output} and {output.with_suffix('.csv')}")
    return 0
