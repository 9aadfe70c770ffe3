"""Score every model of a finished bench again with other evaluation settings, e.g. the other retrieval feature.

The bench evaluates each model with its run config; settings that only change evaluation
(``model.retrieval_feature``, ``eval.metric``) are part of a cell's key, so changing them in
the bench file would retrain everything. This script loads the bench's finished models instead
and prints one row per result row: the bench's mAP / rank-1 beside the re-scored ones.

    python scripts/bench_reeval.py runs/bench/cuhk03_cpu --set model.retrieval_feature=before_neck
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reid_prune.bench import cell_checkpoint, load_bench, plan_bench
from reid_prune.config import load_config
from reid_prune.data import ReIDDataset
from reid_prune.engine import evaluate_checkpoint, prepare_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="the bench's output folder (holds results.json and cells/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override applied to every model, e.g. model.retrieval_feature=before_neck")
    args = parser.parse_args(argv)
    results = args.output / "results.json"
    if not results.is_file():
        parser.error(f"{results} does not exist; run reid-prune bench --output {args.output} first")
    bench = load_bench(args.output / "bench.yaml")
    cells = {cell.key: cell for cell in plan_bench(bench).cells}
    rows = json.loads(results.read_text())["rows"]
    datasets: dict[str, ReIDDataset] = {}  # parsed once per dataset, not once per model
    print(f"{'scenario':13} {'model':10} {'fine-tuned on':14} {'evaluated on':14} "
          f"{'mAP':>6} {'R-1':>6}   {'re-scored mAP':>13} {'R-1':>6}   ({', '.join(args.overrides)})")
    for row in rows:
        cell = cells[row["cell"]]
        cfg = load_config(None, [*args.overrides, "eval.latency=false"], base=cell.cfg.to_dict())
        cfg.data = bench.data_config(row["dataset"])
        if row["dataset"] not in datasets:
            datasets[row["dataset"]] = prepare_dataset(cfg.data, verbose=False)
        report = evaluate_checkpoint(cfg, cell_checkpoint(cell, args.output / "cells" / cell.key), progress=False,
                                     dataset=datasets[row["dataset"]])
        print(f"{row['scenario']:13} {row['name']:10} {row['finetune'] or '-':14} {row['dataset']:14} "
              f"{row['mAP']:6.2f} {row['rank1']:6.2f}   {report['mAP']:13.2f} {report['rank1']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
