"""Choose the distillation defaults on the validation split (issue 23): one pruned model per setting.

Prunes one source checkpoint with one method and budget, once without distillation and once per
distillation setting below, every run with the same post-source step budget (``prune.train_steps``)
and the same fine-tuning seed, and prints each finished model's **validation** mAP and rank-1
(``report.json``'s ``validation``; the config must carve a validation split, ``data.val_ids``).
The test split is not shown: a choice made here must not read it.

Each run is a ``reid-prune prune`` job writing OUTPUT/NAME/; a finished one (its report.json) is
read back, not run again, so the sweep can run in parts. The table goes to OUTPUT/sweep.md and
OUTPUT/sweep.csv.

On CUHK03 with the protocol's first source (docs/distillation.md):

    python scripts/distill_sweep.py \\
        --checkpoint runs/bench/cuhk03_protocol_cpu/cells/train-cuhk03_market-resnet18-s0-4320cb0538/best.pt \\
        --config configs/cuhk03_market_resnet18_cpu.yaml --set data.val_ids=100 \\
        --method haoli --target-macs 0.5 --train-steps 396 --output runs/distill_sweep
    python scripts/distill_sweep.py ... --only plain feature      # some settings now, the rest later
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from reid_prune.config import load_config
from reid_prune.jobs.prune import prune_checkpoint

# name -> prune.distill (None: no distillation). The order is the table's.
SETTINGS: dict[str, dict | None] = {
    "plain": None,
    "feature": {"feature": 1.0, "relational": 0.0},
    "relational": {"feature": 0.0, "relational": 1.0},
    "feature+relational": {"feature": 1.0, "relational": 1.0},
    "feature+relational+logits": {"feature": 1.0, "relational": 1.0, "logits": 1.0},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the source model (best.pt)")
    parser.add_argument("--config", required=True, help="run config of the source (data, recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--method", default="haoli")
    parser.add_argument("--target-macs", type=float, default=0.5, help="fraction of the MACs kept")
    parser.add_argument("--scope", default="internal")
    parser.add_argument("--train-steps", type=int, required=True, help="optimiser steps after the source, each run")
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="run these settings (default: all)")
    parser.add_argument("--output", required=True, help="folder of the runs and the table")
    return parser.parse_args(argv)


def run_setting(args: argparse.Namespace, name: str, distill: dict | None) -> dict:
    """The report of one setting: read back when its report.json exists, else pruned now."""
    out = Path(args.output) / name
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    overrides = [*args.overrides, f"prune.method={args.method}", f"prune.target_macs={args.target_macs}",
                 f"prune.scope={args.scope}", f"prune.train_steps={args.train_steps}", "prune.finetune_epochs=0"]
    if distill is not None:
        overrides.append("prune.distill=" + json.dumps(distill))
    cfg = load_config(args.config, overrides)
    if not cfg.data.val_ids:
        raise SystemExit("the choice must read a validation split: give --set data.val_ids=N (N identities)")
    print(f"[{name}] pruning {args.checkpoint} with {args.method} to {args.target_macs} of the MACs", flush=True)
    return prune_checkpoint(cfg, args.checkpoint, output=out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for name in args.only or list(SETTINGS):
        report = run_setting(args, name, SETTINGS[name])
        val = report["validation"]
        rows.append({"setting": name, "val_mAP": round(val["mAP"], 2), "val_rank1": round(val["rank1"], 2),
                     "train_steps": report["train_steps"], "distill": json.dumps(report["distill"])})
    out = Path(args.output)
    with open(out / "sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| setting | validation mAP | validation rank-1 | steps |", "|---|---|---|---|"]
    lines += [f"| {r['setting']} | {r['val_mAP']:.2f} | {r['val_rank1']:.2f} | {r['train_steps']} |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
