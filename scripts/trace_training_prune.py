"""Trace a method that prunes during fine-tuning: mAP before and after each epoch's pruning step, then after removal.

For PSFP, SFP, soft FPGM, AutoBalanced or AFP+PRC, the schedule acts at the end of every
fine-tuning epoch (zeroing or cutting channels). This script runs one ``reid-prune prune``
job with that schedule wrapped, and prints the validation mAP of the model right before and
right after each epoch-end step, then of the model handed to the final removal and of the
physically pruned model. It tells apart a schedule that does not fit the fine-tuning length
from a removal that changes the network.

    python scripts/trace_training_prune.py --config configs/cuhk03_market_resnet18_cpu.yaml \\
        --checkpoint runs/bench/cuhk03_methods_cpu/cells/train-cuhk03_market-resnet18-s0-038b0a3e5a/run/last.pt \\
        --output runs/trace/psfp --set prune.method=psfp --set prune.target_macs=0.5 --set prune.finetune_epochs=5

Every evaluation costs one pass over the query and gallery images (about 10 s for CUHK03 at
128x64 on two CPU cores). A bad config, checkpoint or output folder stops it before any
training with a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from torch import nn

from reid_prune.commands.common import USER_ERRORS
from reid_prune.config import load_config
from reid_prune.jobs.prune import prune_checkpoint, pruner_from_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="run config (configs/*.yaml)")
    parser.add_argument("--checkpoint", required=True, help="the model to prune (best.pt / last.pt)")
    parser.add_argument("--output", required=True, help="folder for pruned.pt and report.json (must not hold one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set prune.method=psfp (repeatable)")
    args = parser.parse_args(argv)
    try:
        return trace(args.config, args.checkpoint, args.output, args.overrides)
    except USER_ERRORS as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2


def trace(config: str, checkpoint: str, output: str, overrides: list[str]) -> int:
    """Run the prune job of ``config`` on ``checkpoint`` into ``output``, printing the trace.

    Raises:
        ValueError: the method prunes before fine-tuning, or a config key is invalid (ConfigError).
        FileNotFoundError, FileExistsError: a missing config or checkpoint, an output holding a model.
    """
    cfg = load_config(config, ["eval.latency=false", *overrides])
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint!r} is not a file; give a best.pt or last.pt of a run")
    pruner = pruner_from_config(cfg)
    if pruner.requires != "training":
        raise ValueError(f"prune.method {pruner.name!r} prunes before fine-tuning; there is nothing to trace "
                         "(give a method that prunes during it: psfp, l2, fpgm with mode soft, autobalanced, afp_prc)")

    def score(owner: Any, model: nn.Module) -> float:
        # The prune job's own validation (its query/gallery loaders): no second parse of the dataset.
        return owner.context.evaluate(model)["mAP"]

    schedule = pruner.schedule
    on_epoch_end, finalize = schedule.on_epoch_end, schedule.finalize

    def traced_epoch_end(owner: Any, loop: Any, epoch: int) -> None:  # owner: the Pruner
        before = score(owner, loop.model)
        on_epoch_end(owner, loop, epoch)
        after = score(owner, loop.model)
        print(f"epoch {epoch + 1}: mAP {before:.2f} before its pruning step, {after:.2f} after", flush=True)

    def traced_finalize(owner: Any, model: nn.Module) -> nn.Module:  # owner: the Pruner
        print(f"handed to the final removal: mAP {score(owner, model):.2f}", flush=True)
        return finalize(owner, model)

    schedule.on_epoch_end, schedule.finalize = traced_epoch_end, traced_finalize
    report = prune_checkpoint(cfg, checkpoint, output=output, progress=False, pruner=pruner)
    print(f"after removal: mAP {report['finetuned']['mAP']:.2f}, MACs kept "
          f"{report['finetuned']['macs'] / report['before']['macs']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
