"""Measured latency of checkpoints against a reference checkpoint, all timed in turns in one run.

For each candidate: its latency over the reference's at each batch size (paired timing, the
two models alternating, median of --rounds passes and at least --min-seconds per batch size:
``reid_prune.evaluation.complexity.paired_latency``), in the precision and memory format
``eval`` uses (--amp, --channels-last). Ratios from one run are what to compare; absolute
times on a shared machine are not.

    python scripts/compare_latency.py runs/r18/last.pt runs/pruned-a/pruned.pt runs/pruned-b/pruned.pt
    python scripts/compare_latency.py REF.pt CAND.pt --size 128 64 --batch-sizes 1 32 --rounds 21
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from reid_prune.commands.argtypes import add_compute_args
from reid_prune.checkpoint import load_model
from reid_prune.evaluation.complexity import complexity, latency_ratios
from reid_prune.precision import ComputeSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="checkpoint the others are compared with (e.g. the unpruned model)")
    parser.add_argument("candidates", nargs="+", help="checkpoints to time against the reference")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"),
                        help="input height and width in pixels (default: 128 64)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=(1, 32), help="default: 1 32")
    add_compute_args(parser, "the timed passes", cpu_only=True)
    parser.add_argument("--rounds", type=int, default=21, help="timed passes of each model per batch size")
    parser.add_argument("--min-seconds", type=float, default=4.0, help="at least this long per batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads while timing (0: torch's)")
    args = parser.parse_args(argv)
    for path in (args.reference, *args.candidates):
        if not Path(path).is_file():
            parser.error(f"{path}: no such checkpoint")
    if min(args.batch_sizes) < 1 or args.rounds < 1 or args.min_seconds < 0:
        parser.error("--batch-sizes and --rounds must be >= 1 and --min-seconds >= 0")
    compute = ComputeSettings.resolve("cpu", args.amp, args.channels_last)
    size = tuple(args.size)
    reference = load_model(args.reference)
    base_macs = complexity(reference, size)["macs"]
    threads = args.threads or torch.get_num_threads()
    print(f"latency against {args.reference} at {size[0]}x{size[1]}, cpu, {compute.precision}, "
          f"{compute.memory_format_name}, {threads} threads, {args.rounds} rounds, >= {args.min_seconds:g} s per batch")
    columns = "".join(f"{f'batch {b}':>10}" for b in args.batch_sizes)
    print(f"{'checkpoint':<44}{'MACs':>7}{columns}{'mean':>8}")
    for path in args.candidates:
        model = load_model(path)
        ratios = latency_ratios(reference, model, size, batch_sizes=args.batch_sizes, compute=compute,
                                threads=args.threads, rounds=args.rounds, min_seconds=args.min_seconds)
        values = [ratios[f"batch{b}"] for b in args.batch_sizes]
        macs = complexity(model, size)["macs"] / base_macs
        print(f"{path:<44}{macs:>7.3f}{''.join(f'{v:>10.3f}' for v in values)}{sum(values) / len(values):>8.3f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
