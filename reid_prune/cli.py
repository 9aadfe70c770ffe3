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


def _prune_overrides(args: argparse.Namespace) -> list[str]:
    """Map the prune flags onto prune.* config keys (flags win over the file and --set)."""
    flags = {"method": args.method, "rate": args.rate, "target_macs": args.target_macs,
             "target_params": args.target_params, "scope": args.scope, "finetune_epochs": args.finetune_epochs}
    overrides = [f"prune.{k}={v}" for k, v in flags.items() if v is not None]
    if args.rate is not None or args.target_macs is not None or args.target_params is not None:
        # One target on the command line replaces any target the config file set.
        overrides += [f"prune.{k}=null" for k in ("rate", "target_macs", "target_params") if flags[k] is None]
    overrides += [f"prune.options.{text}" for text in args.option]
    return overrides


def cmd_prune(args: argparse.Namespace) -> int:
    from .engine.prune_run import STAGES, prune_checkpoint
    from .report import human

    cfg = load_config(args.config, list(args.overrides) + _prune_overrides(args))
    output = args.output or str(Path(cfg.output) / f"pruned-{cfg.prune.method}")
    report = prune_checkpoint(cfg, args.checkpoint, output=output, progress=not args.quiet)
    stages = [s for s in STAGES if report.get(s)]
    rows = []
    for key, label in (("mAP", "mAP %"), ("rank1", "rank-1 %"), ("params", "params"), ("macs", "MACs")):
        rows.append([label] + [f"{report[s][key]:.2f}" if key in ("mAP", "rank1") else human(report[s][key])
                               for s in stages])
    for batch in report["before"].get("latency_ms", {}):
        rows.append([f"latency {batch} ms"] + [f"{report[s]['latency_ms'][batch]:.2f}" for s in stages])
    print(f"\n{cfg.prune.method} ({cfg.prune.scope}) on {args.checkpoint}")
    print(format_table(["", *stages], rows))
    print(f"wrote {output}/pruned.pt and {output}/report.json")
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
    "prune": (cmd_prune, "prune a checkpoint with one method, fine-tune, report before/after", """\
Loads a checkpoint, removes channels with the chosen method (they are physically
removed: the saved model is smaller and faster), optionally fine-tunes, and
writes DIR/pruned.pt and DIR/report.json (params, MACs, latency, mAP and rank-1
before pruning, right after, and after fine-tuning). Rates are fractions
PRUNED; --target-macs/--target-params are fractions KEPT of the whole model.
Training-time methods (psfp, fpgm with mode=soft, ...) run their schedule inside
the fine-tuning epochs. Method settings go through --option KEY=VALUE.

examples:
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method fpgm --rate 0.4
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method haoli \\
      --target-macs 0.5 --scope all --finetune-epochs 4 --output runs/demo/haoli50
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method psfp --rate 0.3 \\
      --finetune-epochs 6
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train person re-ID feature extractors and make them cheap to run by structured pruning.",
        epilog="Run 'reid-prune COMMAND --help' for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (func, summary, description) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        if name != "synth":
            _add_config_args(p)
            p.add_argument("--quiet", action="store_true", help="no progress bars or dataset summaries")
    p_train, p_eval, p_prune, p_synth = (sub.choices[n] for n in ("train", "eval", "prune", "synth"))
    p_prune.add_argument("--checkpoint", required=True, metavar="CKPT", help="the trained model to prune")
    p_prune.add_argument("--method", help="pruning method (default: the config's prune.method); "
                         "haoli, molchanov, entropy, autobalanced, psfp, fpgm, thinet, channel_pruning, afp_prc")
    target = p_prune.add_mutually_exclusive_group()
    target.add_argument("--rate", type=float, help="fraction of channels pruned in every group, in [0, 1)")
    target.add_argument("--target-macs", type=float, metavar="F", help="keep this fraction of the MACs, e.g. 0.5")
    target.add_argument("--target-params", type=float, metavar="F", help="keep this fraction of the parameters")
    p_prune.add_argument("--scope", choices=("internal", "all"),
                         help="internal: convs inside blocks; all: also residual streams (default: config)")
    p_prune.add_argument("--finetune-epochs", type=int, metavar="N", help="epochs of fine-tuning after pruning")
    p_prune.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="method setting, e.g. --option mode=soft (repeatable)")
    p_prune.add_argument("--output", metavar="DIR", help="folder for pruned.pt and report.json "
                         "(default: OUTPUT/pruned-METHOD under the config's output)")
    p_train.add_argument("--output", metavar="DIR", help="run folder (default: the config's output key)")
    p_train.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    p_eval.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    p_eval.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p_synth.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    p_synth.add_argument("--ids", type=int, default=60, help="training identities (default: 60)")
    p_synth.add_argument("--test-ids", type=int, default=30, help="test identities, query + gallery (default: 30)")
    p_synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default: 0)")
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
