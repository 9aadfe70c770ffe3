"""Pruning speed benchmark: real latency gain, pruning cost, and an optional Torch-Pruning anchor.

MACs mode (the default). For ResNet-50 at 256x128 on the CPU this prints, for each method:
- the MACs ratio and the measured latency ratio pruned / original (batch 16, median of repeats,
  fp32, NCHW),
- the seconds spent scoring and cutting (and, for data-driven methods, on how many images).

Both latencies are measured in the same run, alternating, so machine noise hits both alike.
With the ``bench`` extra installed (torch-pruning), Torch-Pruning's L1 pruner is run at the
same MAC budget as an anchor (``reid_prune.bench.anchors``, the last stage left whole). Exit code 1 when a budget below is missed:

    latency ratio <= 0.6 at --target-macs 0.5 (weight methods, scope all: the default)
    one-shot scoring + surgery < 2 s (haoli, fpgm)
    molchanov and entropy scoring < 60 s on 256 images; thinet, channel_pruning < 600 s
    for the whole network

Latency mode (``--latency``, issue 14). For ResNet-50 and ResNet-18 at 256x128 on the CPU, in
the precision and memory format ``eval`` uses (--amp, --channels-last: auto), each batch size
(1 and 32) targeted on its own, ``target_latency`` 0.5 and 0.3, HaoLi with the uniform and the
global allocation (scope auto = all): the measured latency ratio after surgery (paired with
the original, median of --repeats rounds) against the target, flagged when outside +-0.05;
the seconds to build the latency table in an empty cache (--cache, default a new temporary
folder) and to read it back, and per prune the seconds planning (table and solve) and timing
the plans (feedback). Exit code 1 when a ratio misses by more than 0.05, a ResNet-50 table
takes 120 s or more to build, or a cached table 5 s or more to read.

Usage:
    python scripts/bench_prune.py                       # haoli, fpgm at target-macs 0.5
    python scripts/bench_prune.py --methods all         # every implemented method
    python scripts/bench_prune.py --methods thinet --images 256
    python scripts/bench_prune.py --latency             # latency budgets (about 6-12 minutes on 2 cores)
    python scripts/bench_prune.py --latency --quick     # ResNet-18 at 64x32: proves the script runs (a minute)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

import torch

from reid_prune.commands.argtypes import add_compute_args
from reid_prune import build_model
from reid_prune.bench.anchors import TorchPruningAnchor
from reid_prune.bench.plan import torch_pruning_version
from reid_prune.evaluation import complexity, paired_latency
from reid_prune.evaluation.complexity import latency_ratios
from reid_prune.precision import ComputeSettings
from reid_prune.pruners import LatencyCost, PruneContext, available, get_method, get_pruner
from reid_prune.pruners.criteria import score_groups

BUDGET_SECONDS = {"haoli": 2.0, "fpgm": 2.0, "molchanov": 60.0, "entropy": 60.0, "thinet": 600.0,
                  "channel_pruning": 600.0}
# Iterative methods: the budget is on scoring the whole network once (their full schedule
# repeats it between fine-tuning rounds), so only the scoring is timed.
SCORE_ONLY = ("molchanov", "entropy")
# Latency mode: the band around the target, and the seconds a ResNet-50 table may take to build / read back.
LATENCY_BAND, TABLE_BUILD_SECONDS, TABLE_CACHED_SECONDS = 0.05, 120.0, 5.0


def paired_ms(a: torch.nn.Module, b: torch.nn.Module, size: tuple[int, int], batch: int, repeats: int):
    """Median ms per batch of two models, timed alternately on the same input (fp32, NCHW)."""
    ms_a, ms_b = paired_latency([a, b], size, batch_size=batch, rounds=repeats, warmup=2)
    return ms_a * batch, ms_b * batch


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
    latency = parser.add_argument_group("latency mode")
    latency.add_argument("--latency", action="store_true", help="latency budgets instead of a MACs budget")
    latency.add_argument("--quick", action="store_true", help="with --latency: ResNet-18 at 64x32, batch 1 and 2, "
                         "target 0.6, uniform only (proves the script runs)")
    latency.add_argument("--archs", default="resnet50,resnet18")
    latency.add_argument("--latency-targets", default="0.5,0.3", help="fractions of the latency kept")
    latency.add_argument("--batch-sizes", default="1,32", help="each one targeted on its own")
    latency.add_argument("--allocations", default="uniform,global")
    add_compute_args(latency, "the timed passes (as eval uses them)", cpu_only=True)
    latency.add_argument("--cache", help="latency table cache folder (default: a new temporary folder, so the "
                         "first table of each setting is really built)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.latency:
        return latency_main(args)
    size = (args.height, args.width)
    methods = available() if args.methods == "all" else args.methods.split(",")
    torch.manual_seed(0)
    base = build_model(args.arch).eval()
    base_cost = complexity(base, size)
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
        ms_pruned, ms_base = paired_ms(pruned, base, size, args.batch, args.repeats)
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
        ms_tp, ms_base = paired_ms(tp_model.eval(), base, size, args.batch, args.repeats)
        print(f"{'torch-pruning L1':<16}{tp_cost['macs'] / base_cost['macs']:>11.3f}"
              f"{tp_cost['params'] / base_cost['params']:>13.3f}{ms_tp:>12.1f}{ms_base:>9.1f}{ms_tp / ms_base:>15.3f}"
              f"{tp_seconds:>9.2f}")
    for line in failed:
        print("FAILED", line)
    return 1 if failed else 0


def latency_main(args: argparse.Namespace) -> int:
    """Prune to latency targets; print measured ratio vs target, and the table's and the solver's seconds."""
    if args.quick:
        args.archs, args.height, args.width, args.batch_sizes = "resnet18", 64, 32, "1,2"
        args.latency_targets, args.allocations, args.repeats = "0.6", "uniform", 5
    os.environ["REID_PRUNE_CACHE"] = args.cache or tempfile.mkdtemp(prefix="reid_prune_latency_")
    compute = ComputeSettings.resolve("cpu", args.amp, args.channels_last)
    size = (args.height, args.width)
    targets = [float(t) for t in args.latency_targets.split(",")]
    print(f"latency budgets at {size[0]}x{size[1]}, cpu, {compute.precision}, {compute.memory_format_name}, "
          f"{args.threads or torch.get_num_threads()} threads, round_to {args.round_to}; table cache "
          f"{os.environ['REID_PRUNE_CACHE']}")
    print(f"{'arch':<10}{'batch':>6}{'allocation':>11}{'target':>8}{'predicted':>10}{'measured':>10}{'MACs':>7}"
          f"{'table+solve s':>14}{'feedback s':>11}  plans: predicted->measured")
    failed = []
    for arch in args.archs.split(","):
        torch.manual_seed(0)
        base = build_model(arch).eval()
        base_macs = complexity(base, size)["macs"]
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            built = time.perf_counter()
            table = LatencyCost(base, compute, batch_sizes=(batch,), threads=args.threads, input_size=size,
                                round_to=args.round_to)
            build_seconds = time.perf_counter() - built
            read = time.perf_counter()
            LatencyCost(base, compute, batch_sizes=(batch,), threads=args.threads, input_size=size,
                        round_to=args.round_to)
            read_seconds = time.perf_counter() - read
            print(f"{arch} batch {batch}: table built in {build_seconds:.1f} s ({table.timings} timings, "
                  f"{len(table.models[0].layers)} layers), read back in {read_seconds:.2f} s")
            if arch == "resnet50" and build_seconds >= TABLE_BUILD_SECONDS:
                failed.append(f"{arch} batch {batch}: table built in {build_seconds:.0f} s >= {TABLE_BUILD_SECONDS}")
            if read_seconds >= TABLE_CACHED_SECONDS:
                failed.append(f"{arch} batch {batch}: cached table read in {read_seconds:.1f} s")
            for allocation in args.allocations.split(","):
                for target in targets:
                    pruner = get_pruner("haoli", target_latency=target, allocation=allocation, input_size=size,
                                        round_to=args.round_to, latency_batch_sizes=(batch,),
                                        latency_threads=args.threads, compute=compute)
                    started = time.perf_counter()
                    try:
                        pruned = pruner.prune(copy.deepcopy(base)).eval()
                    except ValueError as error:  # an unreachable target: report it, go on with the others
                        print(f"{arch:<10}{batch:>6}{allocation:>11}{target:>8.2f}  UNREACHABLE: {error}")
                        failed.append(f"{arch} batch {batch} {allocation} target {target}: unreachable")
                        continue
                    prune_seconds = time.perf_counter() - started
                    ratio = latency_ratios(base, pruned, size, batch_sizes=(batch,), compute=compute,
                                           threads=args.threads, rounds=args.repeats)[f"batch{batch}"]
                    info = pruner.summary()["latency_budget"]
                    seconds = info["seconds"]
                    feedback = seconds.get("feedback", 0.0)
                    solve = seconds["table"] + seconds["plan"] - feedback
                    flag = "" if abs(ratio - target) <= LATENCY_BAND else "  MISSED"
                    steps = ", ".join(f"{s['predicted']:.2f}->{s['measured']:.2f}" for s in info["feedback"])
                    print(f"{arch:<10}{batch:>6}{allocation:>11}{target:>8.2f}{info['predicted']:>10.3f}{ratio:>10.3f}"
                          f"{complexity(pruned, size)['macs'] / base_macs:>7.3f}{solve:>14.2f}{feedback:>11.1f}  "
                          f"{steps} (prune {prune_seconds:.0f} s){flag}")
                    if flag:
                        failed.append(f"{arch} batch {batch} {allocation} target {target}: measured {ratio:.3f}")
    for line in failed:
        print("FAILED", line)
    if args.quick and failed:
        print("(--quick: at 64x32 per-op overhead and noise dominate the timings; misses are shown, not failed)")
        return 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
