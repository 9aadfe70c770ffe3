"""``reid-prune sensitivity``: prune each channel group alone at several rates; choose per-group rates."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..analysis.plotting import missing_note
from ..pruners import SCOPES
from .argtypes import PRECISION_HELP, fraction_list, int_at_least
from .common import add_checkpoint_job_args, given, load_run_config, method_flags
from .report import format_table

NAME = "sensitivity"
SUMMARY = "prune each channel group alone at several rates; choose per-group rates"
DESCRIPTION = """\
The sensitivity analysis of Li et al. (Pruning Filters for Efficient ConvNets,
Figure 2): for every channel group the method may cut (--scope) and every rate,
a copy of the model is pruned in that group only, without fine-tuning, and its
mAP measured on the test split (the validation split with data.val_ids; or on
--subset-ids identities drawn with --seed, for speed). DIR gets sensitivity.csv
(one row per group and rate), sensitivity.png (mAP against rate, one curve per group; needs the plot extra)
and layer_rates.yaml: the per-group rates that keep --target-macs of the MACs
with the least predicted mAP loss, for prune --layer-rates (same --method,
--scope and --option). Methods that prune during training are refused.

examples:
  reid-prune sensitivity --config configs/demo.yaml --checkpoint runs/demo/best.pt --method haoli \\
      --scope all --target-macs 0.5 --output runs/demo/sensitivity
  reid-prune sensitivity --config configs/cuhk03_market_resnet18_cpu.yaml --checkpoint runs/cuhk03_r18/last.pt \\
      --method haoli --rates 0.25,0.5,0.75 --subset-ids 100 --seed 0 --output runs/cuhk03_r18/sensitivity
""" + PRECISION_HELP
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = True, True, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_job_args(parser)
    parser.add_argument("--method", help="pruning method (default: the config's prune.method), e.g. haoli")
    parser.add_argument("--rates", type=fraction_list, default=[0.1, 0.3, 0.5, 0.7, 0.9], metavar="R,R,...",
                        help="fractions pruned in each group (default: 0.1,0.3,0.5,0.7,0.9)")
    parser.add_argument("--scope", choices=SCOPES,
                        help="which groups (default: the config's prune.scope; its default auto means internal here)")
    parser.add_argument("--target-macs", type=float, metavar="F", help="fraction of the MACs layer_rates.yaml "
                        "keeps (default: the config's prune.target_macs, else 0.5)")
    parser.add_argument("--subset-ids", type=int_at_least(0), default=0, metavar="N",
                        help="evaluate on N test identities drawn with --seed (default: 0 = all)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method setting, e.g. --option finetune_steps=0 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from ..jobs.sensitivity import sensitivity_checkpoint

    cfg = load_run_config(args, method_flags(args), given({"prune.target_macs": args.target_macs}))
    result = sensitivity_checkpoint(cfg, args.checkpoint, output=args.output, rates=args.rates,
                                    subset_ids=args.subset_ids, seed=args.seed, progress=not args.quiet)
    rates = sorted({r["rate"] for r in result["rows"]})
    swept = {(r["group"], r["rate"]): r for r in result["rows"]}
    chosen = result["allocation"]["rates"]
    table = [[g, swept[g, rates[0]]["channels"], *[f"{swept[g, rate]['mAP']:.2f}" for rate in rates], f"{chosen[g]:g}"]
             for g in chosen]
    print(f"\n{cfg.prune.method} ({result['scope']}): mAP with one group pruned (baseline "
          f"{result['baseline']['mAP']:.2f} on {result['queries']} queries, {result['gallery']} gallery images)")
    print(format_table(["group", "channels", *[f"rate {r:g}" for r in rates], "chosen rate"], table))
    allocation = result["allocation"]
    target = f"{result['target_macs']:g}" + (", the default of --target-macs" if result["target_defaulted"] else "")
    print(f"layer_rates.yaml keeps {allocation['macs_fraction']:.4f} of the MACs (target {target}); predicted mAP "
          f"drop {allocation['predicted_drop']:.2f} points")
    print(f"wrote {', '.join(result['files'])}" + ("" if result["plot"] else f"; {missing_note('sensitivity.png')}"))
    settings = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)  # the same config as this sweep
    print(f"next: reid-prune prune --config {args.config} --checkpoint {args.checkpoint} --method {cfg.prune.method} "
          f"--scope {result['scope']} --layer-rates {Path(args.output) / 'layer_rates.yaml'}{settings}")
    return 0
