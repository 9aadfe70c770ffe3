"""``reid-prune prune``: its flags, its help (with the table of methods) and what it prints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from ..analysis.plotting import missing_note
from ..config import ConfigError, parse_yaml, read_yaml
from ..pruners import ALLOCATIONS, SCOPES, available, get_method, get_pruner
from .argtypes import PRECISION_HELP, int_at_least
from .common import given, load_run_config, method_flags
from .report import format_table

NAME = "prune"
SUMMARY = "prune a checkpoint with one method, fine-tune, report before/after"
DESCRIPTION = """\
Loads a checkpoint, removes channels with the chosen method (they are physically
removed: the saved model is smaller and faster), optionally fine-tunes, and
writes DIR/pruned.pt and DIR/report.json (params, MACs, latency, mAP and rank-1
before pruning, right after, and after fine-tuning, and the kept MACs, params
and latency ratio measured after surgery next to the target). Rates are
fractions PRUNED; --target-macs/--target-params/--target-latency are fractions
KEPT of the whole model. --target-latency keeps that fraction of the latency
measured on THIS machine (train.device, precision and memory format, threads
as eval reports; other threads: prune.latency_threads), averaged over
--latency-batch-sizes (default: eval's, 1 and 32): planned from a per-layer
lookup table timed here and cached in $REID_PRUNE_CACHE/latency (default
~/.cache/reid_prune/latency; a first ResNet-50 takes a minute or two, later
runs seconds), then corrected by timing the planned widths
(prune.latency_feedback).
Scope: with a MACs, params or latency target the default (prune.scope auto)
prunes the residual streams too (scope all): keeping them whole gives less
real speed-up. At half its MACs a ResNet-50 kept 0.69-0.75 of its CPU latency
with internal and 0.45-0.47 with all (fp32; python scripts/bench_prune.py
--scope internal, and without --scope; docs/results.md). With a rate or
per-group rates auto means internal. Methods that support only internal
(entropy, thinet, channel_pruning) stay internal. --scope internal keeps the
streams whole.
Training-time methods (psfp, l2, fpgm with mode=soft, autobalanced, afp_prc) run
their schedule inside the fine-tuning epochs. Method settings go through
--option KEY=VALUE. --allocation decides how many channels each group keeps:
uniform (one rate for every group), global (channels of all groups ranked
together by the method's normalised scores), layer_rates (the rates of
--layer-rates, which it needs; chosen by itself when --layer-rates is given)
or the method's default (below); docs/pruners.md lists each method's rules,
options and sources.
--layer-rates takes per-group rates from a YAML file {group: rate}, such as the
layer_rates.yaml of reid-prune sensitivity; a file made with --scope all needs
--scope all here too (with per-group rates auto means internal). DIR also gets
widths.png: the kept fraction and width of every channel group (needs the plot
extra; the numbers are in report.json under "widths").
--distill fine-tunes with knowledge distillation from the unpruned model (or
--teacher CKPT): the re-ID losses stay on, and a feature loss (cosine to the
teacher's features) and a relational loss (the teacher's in-batch similarity
ranking) are added, also during a method's own steps between rounds
(prune.distill: weights, temperatures, logits; docs/distillation.md). The
teacher runs forward on every batch: a step costs about one more forward pass.

examples:
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method fpgm --rate 0.4
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method haoli \\
      --target-macs 0.5 --scope all --finetune-epochs 4 --output runs/demo/haoli50
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method psfp --rate 0.3 \\
      --finetune-epochs 6
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method haoli \\
      --target-macs 0.5 --allocation global --finetune-epochs 4
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method molchanov \\
      --target-macs 0.5 --train-steps 400     # its steps between rounds count: the rest fine-tunes
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method haoli \\
      --target-macs 0.5 --train-steps 400 --distill   # fine-tuned with the unpruned model as teacher
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method fpgm \\
      --target-latency 0.5 --latency-batch-sizes 1 32 --finetune-epochs 4 --output runs/demo/fpgm-lat50
  reid-prune prune --config configs/demo.yaml --checkpoint runs/demo/best.pt --method haoli --scope all \\
      --layer-rates runs/demo/sensitivity/layer_rates.yaml --output runs/demo/haoli-sensitivity
""" + PRECISION_HELP
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = True, True, True, None


def read_layer_rates(path: str) -> dict[str, float]:
    """The {group: rate} mapping of a --layer-rates file (e.g. layer_rates.yaml of reid-prune sensitivity)."""
    example = "e.g. 'layer1.0.conv1: 0.3' (the layer_rates.yaml of reid-prune sensitivity)"
    if _parses_empty(Path(path)):  # read_yaml's own message would point to configs/demo.yaml, which has no rates
        raise ConfigError(f"--layer-rates file {path!r} is empty; write one 'group name: prune rate' line per group, "
                          f"{example}")
    rates = read_yaml(path, "--layer-rates file")
    if not isinstance(rates, dict) or not rates:
        raise ConfigError(f"--layer-rates file {path!r}: expected a mapping of group name to prune rate, "
                          f"{example}, got {rates!r}")
    return rates


def _parses_empty(path: Path) -> bool:
    """Whether ``path`` is a file holding no YAML value (blank or comments only); other faults are read_yaml's."""
    try:
        return path.is_file() and parse_yaml(path.read_text()) in (None, {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def prune_flags(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The prune flags as {dotted config key: value} groups, applied in order; they win over the file and --set."""
    targets = {"prune.rate": args.rate, "prune.target_macs": args.target_macs,
               "prune.target_params": args.target_params, "prune.target_latency": args.target_latency,
               "prune.layer_rates": read_layer_rates(args.layer_rates) if args.layer_rates else None}
    others = {"prune.allocation": args.allocation, "prune.finetune_epochs": args.finetune_epochs,
              "prune.train_steps": args.train_steps, "prune.latency_batch_sizes": args.latency_batch_sizes,
              "train.tensorboard": args.tensorboard}
    groups = [method_flags(args), given(others)]
    # The two lengths exclude each other: the one on the command line replaces the file's other one.
    if args.train_steps is not None and args.finetune_epochs is None:
        groups.append({"prune.finetune_epochs": 0})
    if args.finetune_epochs is not None and args.train_steps is None:
        groups.append({"prune.train_steps": None})
    if args.distill or args.teacher:
        groups.append({"prune.distill": {}})  # on: the file's prune.distill settings, else the defaults
    if args.teacher:
        groups.append({"prune.distill.teacher": args.teacher})
    if any(v is not None for v in targets.values()):
        # One target on the command line replaces any target the config file set (nulled first, so a
        # mapping from the file is replaced rather than merged).
        groups += [dict.fromkeys(targets), given(targets)]
    return groups


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process
    from ..jobs.prune import STAGES, prune_checkpoint
    from ..precision import describe_text
    from .report import achieved_line, human

    cfg = load_run_config(args, *prune_flags(args))
    output = args.output or str(Path(cfg.output) / f"pruned-{cfg.prune.method}")
    report = prune_checkpoint(cfg, args.checkpoint, output=output, progress=not args.quiet)
    if not is_main_process():
        return 0
    stages = [s for s in STAGES if report.get(s)]
    rows = []
    for key, label in (("mAP", "mAP %"), ("rank1", "rank-1 %"), ("params", "params"), ("macs", "MACs")):
        rows.append([label] + [f"{report[s][key]:.2f}" if key in ("mAP", "rank1") else human(report[s][key])
                               for s in stages])
    setting = report["before"].get("latency_setting")
    for batch in report["before"].get("latency_ms", {}):
        rows.append([f"latency {batch}, ms/image ({describe_text(setting)})"]
                    + [f"{report[s]['latency_ms'][batch]:.2f}" for s in stages])
    print(f"\n{cfg.prune.method} ({report['scope']}) on {args.checkpoint}")
    print(format_table(["", *stages], rows))
    print(achieved_line(report))
    if report["distill"] is not None:
        d = report["distill"]
        losses = ", ".join(f"{name} x{d[name]:g}" for name in ("feature", "relational", "logits") if d[name] > 0)
        print(f"distilled from {d['teacher'] or 'the unpruned model'} ({losses})")
    if report["widths_plot"]:
        print(f"wrote {output}/pruned.pt, {output}/report.json and {output}/widths.png")
    else:
        print(f"wrote {output}/pruned.pt and {output}/report.json; {missing_note('widths.png')}")
    return 0


def methods_table() -> str:
    """The registered pruning methods, for ``prune --help``."""
    rows = []
    for name in available():
        pruner = get_pruner(name, rate=0.5, scope=get_method(name).scopes[0])
        rows.append([name, pruner.requires, pruner.allocation.kind, get_method(name).description])
    return "methods:\n" + format_table(["method", "needs", "allocation", "what it does"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``reid-prune prune`` (besides --config, --set and --quiet)."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="the trained model to prune")
    parser.add_argument("--method", help="pruning method (default: the config's prune.method); see the list below")
    parser.add_argument("--allocation", choices=ALLOCATIONS,
                         help="how many channels each group keeps: uniform, global, or layer_rates (the rates "
                              "of --layer-rates, which implies it) (default: the method's own, listed below)")
    parser.epilog = methods_table()
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--rate", type=float, help="fraction of channels pruned in every group, in [0, 1)")
    target.add_argument("--target-macs", type=float, metavar="F", help="keep this fraction of the MACs, e.g. 0.5")
    target.add_argument("--target-params", type=float, metavar="F", help="keep this fraction of the parameters")
    target.add_argument("--target-latency", type=float, metavar="F",
                        help="keep this fraction of the latency measured on this machine, e.g. 0.5 (twice as fast)")
    target.add_argument("--layer-rates", metavar="YAML", help="per-group rates {group: rate}, e.g. the "
                        "layer_rates.yaml of reid-prune sensitivity")
    parser.add_argument("--scope", choices=("auto", *SCOPES),
                         help="internal: convs inside blocks; all: also residual streams; auto: all for a MACs, "
                              "params or latency target, internal for rates and for the methods that support only "
                              "internal (entropy, thinet, channel_pruning) (default: config, auto)")
    parser.add_argument("--latency-batch-sizes", type=int_at_least(1), nargs="+", metavar="B",
                         help="batch sizes whose mean kept latency --target-latency is (default: "
                              "eval.latency_batch_sizes, 1 32); with --target-latency only")
    parser.add_argument("--finetune-epochs", type=int_at_least(0), metavar="N",
                         help="epochs of fine-tuning after pruning (default: prune.finetune_epochs, 0)")
    parser.add_argument("--train-steps", type=int_at_least(1), metavar="N",
                         help="instead of --finetune-epochs: N optimiser steps after the checkpoint in all, the "
                              "method's own training (between rounds or layers, or while it prunes) counted and "
                              "the fine-tuning taking the rest; an equal budget for comparing methods "
                              "(default: prune.train_steps, none)")
    parser.add_argument("--distill", action="store_true",
                        help="fine-tune with distillation from the unpruned model (prune.distill; default: off)")
    parser.add_argument("--teacher", metavar="CKPT",
                        help="distil from this checkpoint instead of the unpruned model (implies --distill)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="method setting, e.g. --option mode=soft (repeatable)")
    parser.add_argument("--output", metavar="DIR", help="folder for pruned.pt and report.json "
                         "(default: OUTPUT/pruned-METHOD under the config's output)")
    parser.add_argument("--tensorboard", nargs="?", const=True, metavar="DIR",
                        help="write TensorBoard logs (fine-tuning per epoch, each stage's metrics, kept widths) to DIR, "
                             "or without DIR to OUTPUT/tensorboard of --output (train.tensorboard); needs the "
                             "tensorboard extra")
