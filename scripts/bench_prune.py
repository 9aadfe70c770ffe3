"""Pruning speed benchmark: real latency gain, pruning cost, and an optional Torch-Pruning anchor.

For ResNet-50 at 256x128 on the CPU this prints, for each method:
- the MACs ratio and the measured latency ratio pruned / original (batch 16, median of repeats),
- the seconds spent scoring and cutting (and, for data-driven methods, on how many images).

Both latencies are measured in the same run, alternating, so machine noise hits both alike.
With the ``bench`` extra installed (torch-pruning), Torch-Pruning's L1 pruner is run at the
same MAC budget as an anchor (``reid_prune.bench.anchors``, the last stage left whole). Exit code 1 when a budget below is missed:

    latency ratio <= 0.6 at --target-macs 0.5 (weight methods, scope all: the default)
    one-shot scoring + surgery < 2 s (haoli, fpgm)
    molchanov and entropy scoring < 60 s on 256 images; thinet, channel_pruning < 600 s
    for the whole network

Usage:
    python scripts/bench_prune.py                       # haoli, fpgm at target-macs 0.5
    python scripts/bench_prune.py --methods all         # every implemented method
    python scripts/bench_prune.py --methods thinet --images 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from reid_prune import build_model
from reid_prune.bench.anchors import TorchPruningAnchor
from reid_prune.bench.plan import torch_pruning_version
from reid_prune.evaluation import complexity
from reid_prune.pruners import PruneContext, available, get_method, get_pruner
from reid_prune.pruners.criteria import score_groups

BUDGET_SECONDS = {"haoli": 2.0, "fpgm": 2.0, "molchanov": 60.0, "entropy": 60.0, "thinet": 600.0,
                  "channel_pruning": 600.0}
# Iterative methods: the budget is on scoring the whole network once (their full schedule
# repeats it between fine-tuning rounds), so only the scoring is timed.
SCORE_ONLY = ("molchanov", "entropy")


def paired_latency(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median ms per batch of two models, timed alternately on the same input."""
    times_a, times_b = [], []
    with torch.inference_mode():
        for _ in range(2):
            a(x), b(x)
        for _ in range(repeats):
            for model, times in ((a, times_a), (b, times_b)):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times_a), statistics.median(times_b)


def synthetic_batches(images: int, batch: int, size: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images in P x K batches (4 images per identity), for data-driven criteria."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, images, batch):
        n = min(batch, images - start)
        out.append((torch.randn(n, 3, *size, generator=gen), torch.arange(n) // 4))
    return out


def torch_pruning_anchor(model: torch.nn.Module, size: tuple[int, int], target_macs: float):
    """Torch-Pruning's L1 pruner at the same MAC budget, the last stage left whole as ours; None without it."""
    if torch_pruning_version() is None:
        return None
    started = time.perf_counter()
    anchor = TorchPruningAnchor("l1", target_macs=target_macs, input_size=size, last_stage=False)
    return anchor.prune(copy.deepcopy(model), PruneContext()), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="haoli,fpgm", help="comma-separated names, or 'all'")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--target-macs", type=float, default=0.5, help="fraction of MACs kept")
    parser.add_argument("--scope", default="all", choices=("internal", "all"),
                        help="all (default) also prunes the residual streams; internal leaves them whole")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="latency batch size")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--images", type=int, default=256, help="images for data-driven criteria")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = (args.height, args.width)
    methods = available() if args.methods == "all" else args.methods.split(",")
    torch.manual_seed(0)
    base = build_model(args.arch).eval()
    base_cost = complexity(base, size)
    x = torch.randn(args.batch, 3, *size)
    batches = synthetic_batches(args.images, 32, size)
    print(f"{args.arch} at {size[0]}x{size[1]}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"target_macs {args.target_macs}, scope {args.scope}, round_to {args.round_to}")
    print(f"original: {base_cost['macs'] / 1e9:.2f} GMACs, {base_cost['params'] / 1e6:.2f} M params")
    header = f"{'method':<16}{'MACs ratio':>11}{'params ratio':>13}{'latency ms':>12}{'orig ms':>9}{'latency ratio':>15}{'prune s':>9}"
    print(header)
    failed = []
    for method in methods:
        # Methods that judge a channel by one layer (entropy, thinet, ...) support only scope internal.
        scope = args.scope if args.scope in get_method(method).scopes else "internal"
        pruner = get_pruner(method, target_macs=args.target_macs, scope=scope, round_to=args.round_to,
                            input_size=size)
        if pruner.requires == "training":
            print(f"{method:<16}  (prunes during training: its cost is the fine-tuning run; see docs/pruners.md)")
            continue
        model = copy.deepcopy(base)
        context = PruneContext(data=batches, num_batches=len(batches))
        started = time.perf_counter()
        if method in SCORE_ONLY:
            pruner.setup(model)
            score_groups(pruner.criterion, model, pruner.groups, context)
            seconds = time.perf_counter() - started
            print(f"{method:<16}  scoring {len(batches) * 32} images: {seconds:.1f} s (iterative schedule not run)")
            if seconds > BUDGET_SECONDS[method]:
                failed.append(f"{method}: scoring took {seconds:.1f} s > {BUDGET_SECONDS[method]} s")
            continue
        pruned = pruner.prune(model, context).eval()
        seconds = time.perf_counter() - started
        cost = complexity(pruned, size)
        ms_pruned, ms_base = paired_latency(pruned, base, x, args.repeats)
        ratio = ms_pruned / ms_base
        print(f"{method + ('' if scope == args.scope else ' (' + scope + ')'):<16}{cost['macs'] / base_cost['macs']:>11.3f}{cost['params'] / base_cost['params']:>13.3f}"
              f"{ms_pruned:>12.1f}{ms_base:>9.1f}{ratio:>15.3f}{seconds:>9.2f}")
        if method in BUDGET_SECONDS and seconds > BUDGET_SECONDS[method]:
            failed.append(f"{method}: pruning took {seconds:.1f} s > {BUDGET_SECONDS[method]} s")
        if pruner.requires == "weights" and scope == "all" and args.target_macs == 0.5 and ratio > 0.6:
            failed.append(f"{method}: latency ratio {ratio:.3f} > 0.6")
    anchor = torch_pruning_anchor(base, size, args.target_macs)
    if anchor is None:
        print("torch-pruning not installed (pip install -e '.[bench]'): no Torch-Pruning anchor")
    else:
        tp_model, tp_seconds = anchor
        tp_cost = complexity(tp_model, size)
        ms_tp, ms_base = paired_latency(tp_model.eval(), base, x, args.repeats)
        print(f"{'torch-pruning L1':<16}{tp_cost['macs'] / base_cost['macs']:>11.3f}"
              f"{tp_cost['params'] / base_cost['params']:>13.3f}{ms_tp:>12.1f}{ms_base:>9.1f}{ms_tp / ms_base:>15.3f}"
              f"{tp_seconds:>9.2f}")
    for line in failed:
        print("FAILED", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
