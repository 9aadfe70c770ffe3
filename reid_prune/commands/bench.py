"""``reid-prune bench``: run a bench file, or with ``--dry-run`` check it and list its cells."""

from __future__ import annotations

import argparse
import shlex

from ..bench.plan import check_plan, describe_budget, plan_bench
from ..bench.run import run_bench
from ..bench.schema import load_bench
from ..bench.trust import Fingerprints, dry_run_state
from ..distributed import is_main_process
from ..outputs import check_output_dir
from .argtypes import precision_help

NAME = "bench"
SUMMARY = "benchmark: train baselines, prune them with every method at each budget, tables and plots"
DESCRIPTION = """\
Runs a bench file (configs/bench/*.yaml, see docs/bench.md): trains the baseline
architectures, prunes the prune_arch baseline with every listed method at each
budget (match:resnet18 = ResNet-18's MACs; latency:0.5 = half its latency
measured here) and fine-tuning seed, optionally with the controls (random
channels, the pruned architecture trained from scratch) and Torch-Pruning
anchors, a dense reference (dense: true: the source fine-tuned unpruned),
and the cross-domain scenario (train on A; prune and fine-tune with A or with
B; evaluate on B); then measures every model's CPU latency against its source's
in interleaved rounds. With train_steps: N every pruned, anchor and dense cell
trains exactly N optimiser steps after its source, the method's own training
counted (docs/bench.md, "Protocol v2").

DIR gets results.csv and results.json (one row per model and seed: params,
MACs, latency and its ratio to the source, mAP, rank-1, mINP, training steps,
pruning and wall time), results.md (mean ± sd per row, then paired contrasts:
each method against Random at its widths and against Dense, with 95% t
intervals and Holm-adjusted p per budget) and pareto.png, curve.png and
widths.png (need matplotlib: the plot extra). Each model is cached in DIR/cells/: run the same
command again after a stop and only unfinished models are computed (an
interrupted training continues from its last epoch). Changing only evaluation
settings (eval.metric, eval.flip, eval.ap, model.retrieval_feature) re-scores
the cached models.

A long bench runs in parts as sub-benches of the same file (fewer methods,
budgets or seeds with --set): a cell's key does not depend on the other
cells, so the full command later computes only what is missing. A --set on a
list replaces the whole list, and a method's label is part of its cells' keys:
restate every entry with its label (docs/bench.md, "Running a long bench in
parts").

examples:
  reid-prune bench --config configs/bench/synthetic_tiny.yaml --output runs/bench-tiny
  reid-prune bench --config configs/bench/cuhk03_protocol_cpu.yaml --dry-run
  reid-prune bench --config configs/bench/cuhk03_protocol_cpu.yaml --set 'seeds=[0]'   # one source's cells
  reid-prune bench --config configs/bench/cuhk03_methods_cpu.yaml --set 'methods=[haoli, random]' --set scratch=null
  reid-prune bench --config configs/bench/cuhk03_cpu.yaml --output runs/bench/cuhk03 --set 'seeds=[0,1,2]'
  reid-prune bench --config configs/bench/market1501_gpu.yaml --set datasets.market1501.root=/data/Market-1501
  torchrun --nproc_per_node=4 -m reid_prune bench --config configs/bench/market1501_gpu.yaml \\
      --set datasets.market1501.root=/data/Market-1501      (each cell on 4 GPUs, docs/multi_gpu.md)
""" + precision_help("base.")  # a bench file sets them under base.train
# A bench file is not a run config: its --config and --set are its own (add_arguments).
CONFIG, QUIET, DISTRIBUTED = False, True, True
INTERRUPTED = "finished models are kept (run the same command again to continue)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="bench file, e.g. configs/bench/cuhk03_methods_cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a bench key, e.g. --set seeds=[0,1], --set base.train.max_batches=2 or "
                             "--set methods[3].options.rounds=5 (Molchanov in cuhk03_methods_cpu.yaml; repeatable)")
    parser.add_argument("--output", metavar="DIR", help="results folder (default: the bench file's output key, "
                                                        "else runs/bench/NAME)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the dataset roots, method settings and budgets, list the models the bench "
                             "would compute and which are already finished, then stop")


def run(args: argparse.Namespace) -> int:
    """Run (or with ``--dry-run`` list) the bench of ``args.config``."""
    bench = load_bench(args.config, args.overrides)
    output = check_output_dir(args.output or bench.output, "--output")
    if args.dry_run:
        plan = plan_bench(bench)
        check_plan(plan, dry_run=True)  # dataset roots, method settings and budgets
        if is_main_process():
            fingerprints = Fingerprints()
            for i, cell in enumerate(plan.cells, 1):
                folder = output / "cells" / cell.key
                state = dry_run_state(cell, output / "cells", fingerprints)  # the checks a run makes before reuse
                print(f"[{i}/{len(plan.cells)}] {state:8}  {cell.describe()}  ({folder})")
            print("budgets: " + ", ".join(describe_budget(k, v, bench.prune_arch) for k, v in plan.budgets.items()))
            for note in plan.notes:
                print(note)
        return 0
    command = shlex.join(["reid-prune", "bench", "--config", args.config,
                          *[a for o in args.overrides for a in ("--set", o)],
                          *(["--output", args.output] if args.output else [])])
    run_bench(bench, output, progress=not args.quiet, command=command)
    return 0
