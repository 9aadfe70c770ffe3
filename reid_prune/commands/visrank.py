"""``reid-prune visrank``: draw queries with their top-k gallery matches (green: right identity)."""

from __future__ import annotations

import argparse

from .argtypes import PRECISION_HELP, int_at_least
from .common import add_checkpoint_job_args, load_run_config

NAME = "visrank"
SUMMARY = "draw queries with their top-k gallery matches (green: right identity)"
DESCRIPTION = """\
Ranks the gallery for chosen queries with the checkpoint's features (the
config's eval.metric, eval.flip and model.retrieval_feature) and draws, per
query, one picture: the query, then its top-k matches in rank order, each with
a green border for the query's identity and red for another, its rank and its
distance underneath. Gallery images of the query's identity from the query's
camera are left out, as in the Market-1501 protocol. DIR gets one PNG per
query, summary.png (the first 8 stacked) and visrank.json (the ranked lists).
Random queries (--queries) come from those with a true match, chosen by --seed.

examples:
  reid-prune visrank --config configs/demo.yaml --checkpoint runs/demo/best.pt --output runs/demo/visrank
  reid-prune visrank --config configs/demo.yaml --checkpoint runs/demo/best.pt --query-ids 61 75 \\
      --topk 5 --output runs/demo/visrank-ids      # the demo's test persons are ids 61-90
""" + PRECISION_HELP
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = True, True, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_job_args(parser)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--queries", type=int_at_least(1), default=8, metavar="N",
                        help="draw N random queries (default: 8)")
    choice.add_argument("--query-ids", type=int, nargs="+", metavar="PID", help="draw every query of these person ids")
    parser.add_argument("--topk", type=int_at_least(1), default=10, metavar="K", help="matches per query (default: 10)")


def run(args: argparse.Namespace) -> int:
    from ..jobs.visrank import visrank_checkpoint

    cfg = load_run_config(args)
    record = visrank_checkpoint(cfg, args.checkpoint, output=args.output, queries=args.queries,
                                query_ids=args.query_ids, topk=args.topk, seed=args.seed, progress=not args.quiet)
    print(f"wrote {len(record['queries'])} query pictures, summary.png and visrank.json to {args.output}")
    return 0
