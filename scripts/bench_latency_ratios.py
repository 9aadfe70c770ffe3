"""Latency of each bench row over its unpruned baseline's, and how far two timing passes disagree.

Reads the ``results.csv`` a ``reid-prune bench`` wrote. For each row name (a method at a budget)
it prints the mean, minimum and maximum over its seeds of ``latency_ms_batchB / baseline's``,
for every batch size in the file; the baseline is the row of kind ``baseline`` with the same
architecture as ``prune_arch`` (the first baseline row when there is one only). With ``--other``,
a second ``results.csv`` of the same cells timed in another pass (delete the cells'
``latency.json`` and rerun the bench), it also prints, per batch size, the median, minimum
and maximum over the models of ``this pass / other pass``::

    python scripts/bench_latency_ratios.py docs/results/cuhk03_methods_cpu/results.csv
    python scripts/bench_latency_ratios.py pass3/results.csv --other pass2/results.csv

docs/results.md (*The methods protocol on CUHK03*) quotes its output.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def batch_columns(rows: list[dict[str, str]]) -> list[str]:
    return [c for c in rows[0] if c.startswith("latency_ms_batch")] if rows else []


def row_ratios(rows: list[dict[str, str]]) -> dict[str, dict[str, list[float]]]:
    """{row name: {latency column: [latency / baseline latency, one per seed]}} for the non-baseline rows."""
    baselines = [r for r in rows if r["kind"] == "baseline"]
    if not baselines:
        raise ValueError("results.csv has no baseline row to divide by")
    ratios: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["kind"] == "baseline":
            continue
        base = next((b for b in baselines if b["arch"] == row["arch"]), baselines[0])
        for column in batch_columns(rows):
            ratios[row["name"]][column].append(float(row[column]) / float(base[column]))
    return ratios


def pass_factors(rows: list[dict[str, str]], other: list[dict[str, str]]) -> dict[str, list[float]]:
    """{latency column: [this pass / other pass, one per cell both files hold]}."""
    by_cell = {r["cell"]: r for r in other}
    return {column: [float(r[column]) / float(by_cell[r["cell"]][column]) for r in rows if r["cell"] in by_cell]
            for column in batch_columns(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a bench's results.csv")
    parser.add_argument("--other", help="results.csv of the same cells from another timing pass")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.results)
        ratios = row_ratios(rows)
        other = read_rows(args.other) if args.other else None
    except (OSError, ValueError, KeyError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    for name, per_column in ratios.items():
        cells = [f"{c.removeprefix('latency_ms_')} {statistics.fmean(v):.2f} ({min(v):.2f}-{max(v):.2f})"
                 for c, v in per_column.items()]
        print(f"{name:36s} " + "  ".join(cells))
    if other is not None:
        for column, factors in pass_factors(rows, other).items():
            print(f"{column.removeprefix('latency_ms_')}: this pass / other over {len(factors)} models: median "
                  f"{statistics.median(factors):.3f}, min {min(factors):.3f}, max {max(factors):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
