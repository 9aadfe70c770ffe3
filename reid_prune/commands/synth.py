"""``reid-prune synth``: write the synthetic re-ID dataset in Market-1501 layout."""

from __future__ import annotations

import argparse

from ..outputs import check_output_dir
from .argtypes import int_at_least

NAME = "synth"
SUMMARY = "write the synthetic re-ID dataset in Market-1501 layout"
DESCRIPTION = """\
Writes a learnable synthetic person re-ID dataset (bounding_box_train,
bounding_box_test, query) to use with data.dataset=market_layout.

example:
  reid-prune synth --output data/synthetic --ids 60 --seed 0
"""
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = False, False, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    parser.add_argument("--ids", type=int_at_least(2), default=60, help="training identities (default: 60)")
    parser.add_argument("--test-ids", type=int_at_least(1), default=30,
                        help="test identities, query + gallery (default: 30)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="random seed; the same seed gives the same files (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset written by an earlier synth (never any other folder)")


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset, generate_synthetic

    check_output_dir(args.output, "--output")
    root = generate_synthetic(args.output, num_ids=args.ids, num_test_ids=args.test_ids, seed=args.seed,
                              overwrite=args.overwrite)
    print(build_dataset("market_layout", root, name="synthetic").summary())
    print(f"wrote {root}")
    return 0
