"""``reid-prune train``: train a re-ID model from a YAML config."""

from __future__ import annotations

import argparse

from .argtypes import PRECISION_HELP
from .common import given, load_run_config, print_report

NAME = "train"
SUMMARY = "train a re-ID model from a YAML config"
DESCRIPTION = """\
Trains the configured backbone with the configured losses, evaluating every
train.eval_every epochs. The run folder gets config.yaml (resolved), last.pt,
best.pt (chosen by mAP) and metrics.jsonl (one line per epoch).

Under torchrun it trains on several GPUs (or CPU processes) with
DistributedDataParallel; the global batch is data.p x data.k x processes
(see docs/multi_gpu.md).

examples:
  reid-prune train --config configs/demo.yaml --output runs/demo
  reid-prune train --config configs/cuhk03_market_resnet18_cpu.yaml --set train.epochs=5
  reid-prune train --config configs/demo.yaml --output runs/demo --resume   # continue after a stop
  torchrun --nproc_per_node=4 -m reid_prune train --config configs/market1501_resnet50.yaml \\
      --set train.sync_bn=true --output runs/market-4gpu
""" + PRECISION_HELP
CONFIG, QUIET, DISTRIBUTED = True, True, True
INTERRUPTED = ("checkpoints written so far are kept (once an epoch has finished, the same command with --resume "
               "continues from it; before that, start again)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", metavar="DIR", help="run folder (default: the config's output key)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    parser.add_argument("--tensorboard", nargs="?", const=True, metavar="DIR",
                        help="write TensorBoard logs (loss terms, learning rate, metrics per epoch) to DIR, or without "
                             "DIR to OUTPUT/tensorboard (train.tensorboard); needs the tensorboard extra")


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process
    from ..jobs.train import train

    cfg = load_run_config(args, given({"train.tensorboard": args.tensorboard}))
    summary = train(cfg, output=args.output, resume=args.resume, progress=not args.quiet)
    if not is_main_process():
        return 0
    metrics = summary.get("test", summary["last"])  # with a validation split, the test split's one score
    report = {**metrics, **summary["complexity"], "precision": summary["precision"],
              "memory_format": summary["memory_format"]}
    split, note = ("validation ", "; below: the last epoch on the test split") if "test" in summary else ("", "")
    print_report(f"trained {cfg.model.arch} -> {summary['output']} (best {split}mAP {summary['best']['mAP']:.2f}% "
                 f"at epoch {summary['best']['epoch']}{note})", report)
    return 0
