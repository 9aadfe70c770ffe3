"""Benchmark harness: train baselines, prune them with every method at each budget, with controls, compare.

``reid-prune bench --config configs/bench/NAME.yaml [--output DIR]`` (docs/bench.md):

1. trains the baseline architectures with :func:`reid_prune.jobs.train.train`, or adopts a
   checkpoint you have as a baseline (:mod:`.sources`);
2. prunes the ``prune_arch`` baseline with every listed method at each budget and
   fine-tuning seed, fine-tunes and evaluates it with
   :func:`reid_prune.jobs.prune.prune_checkpoint`; optionally also the controls (the
   ``random`` method; ``scratch``: a method's pruned architecture trained from scratch) and
   Torch-Pruning anchors, and the cross-domain scenario;
3. scores every model with the bench's evaluation settings, re-scoring cached models when
   only those changed;
4. measures the CPU latency of every model and writes results.csv, results.json,
   results.md, pareto.png and widths.png.

One module per idea: :mod:`.schema` (the bench file), :mod:`.configs` (each cell's run config),
:mod:`.keys` (the cache-key policy), :mod:`.cellspec` (what a plan holds), :mod:`.sources` (baselines
adopted from a checkpoint), :mod:`.plan` (cells,
rows, checks before any work), :mod:`.cells` (running one cell, DDP and caching), :mod:`.trust`
(what a cached cell must prove before reuse: its key, checksums, data fingerprints), :mod:`.anchors` (Torch-Pruning),
:mod:`.scoring` (evaluation-only settings), :mod:`.latency`, :mod:`.tables` and :mod:`.plots`
(the results), :mod:`.run` (the whole bench); the command is :mod:`reid_prune.commands.bench`.
"""

from .cells import DONE, cell_checkpoint, run_cell
from .keys import EVAL_ONLY
from .plan import Cell, Plan, RowSpec, check_plan, plan_bench
from .plots import PLOT_NOTE
from .run import run_bench
from .schema import Bench, load_bench, parse_bench

__all__ = ["DONE", "EVAL_ONLY", "PLOT_NOTE", "Bench", "Cell", "Plan", "RowSpec", "cell_checkpoint",
           "check_plan", "load_bench", "parse_bench", "plan_bench", "run_bench", "run_cell"]
