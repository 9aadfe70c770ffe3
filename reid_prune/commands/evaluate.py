"""``reid-prune eval``: evaluate a checkpoint on the config's query/gallery split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..outputs import check_output_file
from .argtypes import PRECISION_HELP
from .common import load_run_config, print_report

NAME = "eval"
SUMMARY = "evaluate a checkpoint: mAP, CMC, mINP, params, MACs, latency"
DESCRIPTION = """\
Evaluates a checkpoint (pruned or not) on the query/gallery split of the
config's dataset under the Market-1501 protocol, then measures parameters,
MACs (FLOPs = 2 x MACs) and latency per image.

examples:
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt --json report.json
""" + PRECISION_HELP
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = True, True, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    from ..jobs.evaluate import evaluate_checkpoint

    cfg = load_run_config(args)
    if args.json:
        check_output_file(args.json, "--json", inputs=[args.checkpoint])
    report = evaluate_checkpoint(cfg, args.checkpoint, progress=not args.quiet)
    print_report(f"evaluation of {args.checkpoint} on {report['dataset']}", report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
