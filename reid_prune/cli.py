"""The ``reid-prune`` command line. Thin: parse arguments, load the config, call the library."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .config import ConfigError, load_config
from .report import format_table, metric_rows

# Mistakes a user can fix: reported in one line with exit code 2, without a traceback.
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _add_config_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--config", required=required, metavar="YAML",
                        help="YAML config; keys it omits take the defaults in reid_prune/config.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.epochs=5 (repeatable)")


def _config(args: argparse.Namespace):
    return load_config(args.config, args.overrides)


def _print_report(title: str, report: dict) -> None:
    print(f"\n{title}")
    print(format_table(("metric", "value"), metric_rows(report)))


def cmd_train(args: argparse.Namespace) -> int:
    from .engine import train

    cfg = _config(args)
    summary = train(cfg, output=args.output, resume=args.resume, progress=not args.quiet)
    report = {**summary["last"], **summary["complexity"]}
    _print_report(f"trained {cfg.model.arch} -> {summary['output']} (best mAP {summary['best']['mAP']:.2f}% "
                  f"at epoch {summary['best']['epoch'] + 1})", report)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_checkpoint

    cfg = _config(args)
    report = evaluate_checkpoint(cfg, args.checkpoint, progress=not args.quiet)
    _print_report(f"evaluation of {args.checkpoint} on {cfg.data.dataset}", report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data import build_dataset, generate_synthetic

    root = generate_synthetic(args.output, num_ids=args.ids, num_test_ids=args.test_ids, seed=args.seed,
                              overwrite=args.overwrite)
    print(build_dataset("market_layout", root, name="synthetic").summary())
    print(f"wrote {root}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str]] = {
    "train": (cmd_train, "train a re-ID model from a YAML config", """\
Trains the configured backbone with the configured losses, evaluating every
train.eval_every epochs. The run folder gets config.yaml (resolved), last.pt,
best.pt (chosen by mAP) and metrics.jsonl (one line per epoch).

examples:
  reid-prune train --config configs/demo.yaml --output runs/demo
  reid-prune train --config configs/cuhk03_market_resnet18_cpu.yaml --set train.epochs=5
  reid-prune train --config configs/demo.yaml --output runs/demo --resume   # continue after a stop
"""),
    "eval": (cmd_eval, "evaluate a checkpoint: mAP, CMC, mINP, params, MACs, latency", """\
Evaluates a checkpoint (pruned or not) on the query/gallery split of the
config's dataset under the Market-1501 protocol, then measures parameters,
MACs (FLOPs = 2 x MACs) and latency per image.

examples:
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt --json report.json
"""),
    "synth": (cmd_synth, "write the synthetic re-ID dataset in Market-1501 layout", """\
Writes a learnable synthetic person re-ID dataset (bounding_box_train,
bounding_box_test, query) to use with data.dataset=market_layout.

example:
  reid-prune synth --output data/synthetic --ids 60 --seed 0
"""),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reid-prune",
        formatter_class=_HelpFormatter,
        description="Train person re-ID feature extractors and make them cheap to run by structured pruning.",
        epilog="Run 'reid-prune COMMAND --help' for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (func, summary, description) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}", formatter_class=_HelpFormatter)
        p.set_defaults(func=func)
        if name != "synth":
            _add_config_args(p)
            p.add_argument("--quiet", action="store_true", help="no progress bars or dataset summaries")
    p_train, p_eval, p_synth = (sub.choices[n] for n in ("train", "eval", "synth"))
    p_train.add_argument("--output", metavar="DIR", help="run folder (default: the config's output key)")
    p_train.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    p_eval.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    p_eval.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p_synth.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    p_synth.add_argument("--ids", type=int, default=60, help="training identities")
    p_synth.add_argument("--test-ids", type=int, default=30, help="test identities (query + gallery)")
    p_synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p_synth.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"reid-prune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nreid-prune {args.command}: interrupted; checkpoints written so far are kept "
              "(continue a training run with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
