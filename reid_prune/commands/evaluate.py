"""``reid-prune eval``: evaluate a checkpoint on the config's query/gallery split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..outputs import check_output_file
from .argtypes import PRECISION_HELP
from .common import given, load_run_config, print_report

NAME = "eval"
SUMMARY = "evaluate a checkpoint: mAP, CMC, mINP, params, MACs, latency"
DESCRIPTION = """\
Evaluates a checkpoint (pruned or not) on the query/gallery split of the
config's dataset under the Market-1501 protocol, then measures parameters,
MACs (FLOPs = 2 x MACs) and latency per image. With --rerank (eval.rerank) it
also reports the metrics after k-reciprocal re-ranking (Zhong et al., CVPR 2017;
eval.rerank_k1, eval.rerank_k2, eval.rerank_lambda: 20, 6, 0.3 by default),
beside the plain ones.

examples:
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt --json report.json
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt --rerank --set eval.rerank_k1=10
""" + PRECISION_HELP
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = True, True, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    parser.add_argument("--rerank", action="store_true", default=None,
                        help="also report the metrics after k-reciprocal re-ranking (eval.rerank=true)")


def run(args: argparse.Namespace) -> int:
    from ..jobs.evaluate import evaluate_checkpoint

    cfg = load_run_config(args, given({"eval.rerank": args.rerank}))
    if args.json:
        check_output_file(args.json, "--json", inputs=[args.checkpoint])
    report = evaluate_checkpoint(cfg, args.checkpoint, progress=not args.quiet)
    print_report(f"evaluation of {args.checkpoint} on {report['dataset']}", report)
    if "rerank" in report:
        r = report["rerank"]
        print_report(f"re-ranked (k-reciprocal, k1 {r['k1']}, k2 {r['k2']}, lambda {r['lambda']:g}; "
                     f"{r['seconds']:.1f} s)", r)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
