"""The ``sensitivity``, ``visrank`` and ``plot`` subcommands of ``reid-prune``: arguments, help, calls.

:mod:`reid_prune.cli` adds them to its parser (with ``--config``, ``--set`` and ``--quiet``
where they apply) and takes :func:`method_overrides` for ``prune`` too.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable, Mapping

from ..argtypes import PRECISION_HELP, fraction_list, int_at_least
from ..config import ConfigError, load_config
from ..report import format_table
from .plotting import missing_note


def method_overrides(args: argparse.Namespace) -> list[str]:
    """Map --method, --scope and --option onto prune.* config keys (flags win over the file and --set)."""
    flags = {"method": args.method, "scope": args.scope}
    for text in args.option:
        if "=" not in text or not text.partition("=")[0].strip():
            raise ConfigError(f"--option {text!r}: expected KEY=VALUE, for example --option greedy=true")
    return [f"prune.{k}={v}" for k, v in flags.items() if v is not None] + [f"prune.options.{t}" for t in args.option]


def cmd_visrank(args: argparse.Namespace) -> int:
    from .visrank_job import visrank_checkpoint

    cfg = load_config(args.config, args.overrides)
    record = visrank_checkpoint(cfg, args.checkpoint, output=args.output, queries=args.queries,
                                query_ids=args.query_ids, topk=args.topk, seed=args.seed, progress=not args.quiet)
    print(f"wrote {len(record['queries'])} query pictures, summary.png and visrank.json to {args.output}")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .sensitivity import sensitivity_checkpoint

    cfg = load_config(args.config, list(args.overrides) + method_overrides(args))
    target = args.target_macs if args.target_macs is not None else (cfg.prune.target_macs or 0.5)
    result = sensitivity_checkpoint(cfg, args.checkpoint, output=args.output, rates=args.rates, target_macs=target,
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
    print(f"layer_rates.yaml keeps {allocation['macs_fraction']:.4f} of the MACs (target {target:g}); predicted mAP "
          f"drop {allocation['predicted_drop']:.2f} points")
    print(f"wrote {', '.join(result['files'])}" + ("" if result["plot"] else f"; {missing_note('sensitivity.png')}"))
    settings = "".join(f" --set {shlex.quote(o)}" for o in args.overrides)  # the same config as this sweep
    print(f"next: reid-prune prune --config {args.config} --checkpoint {args.checkpoint} --method {cfg.prune.method} "
          f"--scope {result['scope']} --layer-rates {Path(args.output) / 'layer_rates.yaml'}{settings}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .curves import curve_rows, plot_learning_curves, read_metrics, run_labels, write_curves_csv

    if len(args.runs) > 1 and not args.output:
        raise ValueError(f"{len(args.runs)} runs are overlaid in one picture: say where with --output FILE.png")
    output = Path(args.output or Path(args.runs[0]) / "curves.png")
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output: the picture is a PNG; give a name ending in .png, got {str(output)!r}")
    runs = {label: read_metrics(run) for label, run in zip(run_labels(args.runs), args.runs)}
    rows = curve_rows(runs)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_curves_csv(rows, output.with_suffix(".csv"))
    if not plot_learning_curves(rows, output):
        print(f"reid-prune plot: error: {missing_note(output.name)}; wrote {output.with_suffix('.csv')}",
              file=sys.stderr)
        return 2
    print(f"wrote {output} and {output.with_suffix('.csv')}")
    return 0


# name -> (function, one-line summary, description with examples), in the order of `reid-prune --help`.
COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str]] = {
    "sensitivity": (cmd_sensitivity, "prune each channel group alone at several rates; choose per-group rates", """\
The sensitivity analysis of Li et al. (Pruning Filters for Efficient ConvNets,
Figure 2): for every channel group the method may cut (--scope) and every rate,
a copy of the model is pruned in that group only, without fine-tuning, and its
mAP measured on the test split (or on --subset-ids identities drawn with --seed,
for speed). DIR gets sensitivity.csv (one row per group and rate),
sensitivity.png (mAP against rate, one curve per group; needs the plot extra)
and layer_rates.yaml: the per-group rates that keep --target-macs of the MACs
with the least predicted mAP loss, for prune --layer-rates (same --method,
--scope and --option). Methods that prune during training are refused.

examples:
  reid-prune sensitivity --config configs/demo.yaml --checkpoint runs/demo/best.pt --method haoli \\
      --scope all --target-macs 0.5 --output runs/demo/sensitivity
  reid-prune sensitivity --config configs/cuhk03_market_resnet18_cpu.yaml --checkpoint runs/cuhk03_r18/last.pt \\
      --method haoli --rates 0.25,0.5,0.75 --subset-ids 100 --seed 0 --output runs/cuhk03_r18/sensitivity
""" + PRECISION_HELP),
    "visrank": (cmd_visrank, "draw queries with their top-k gallery matches (green: right identity)", """\
Ranks the gallery for chosen queries with the checkpoint's features (the
config's eval.metric, eval.flip and model.retrieval_feature) and draws, per
query, one picture: the query, then its top-k matches in rank order, each with
a green border for the query's identity and red for another, its rank and its
distance underneath. Gallery images of the query's identity from the query's
camera are left out, as in the Market-1501 protocol. DIR gets one PNG per
query, summary.png (the first 8 stacked) and visrank.json (the ranked lists).
Random queries (--queries) come from those with a true match, chosen by --seed.

examples:
  reid-prune visrank --config configs/demo.yaml --checkpoint runs/demo/best.pt --output runs/demo/visrank
  reid-prune visrank --config configs/demo.yaml --checkpoint runs/demo/best.pt --query-ids 61 75 \\
      --topk 5 --output runs/demo/visrank-ids      # the demo's test persons are ids 61-90
""" + PRECISION_HELP),
    "plot": (cmd_plot, "draw learning curves (loss, learning rate, mAP) of one or several runs", """\
Reads metrics.jsonl of each training run folder and draws loss, learning rate
(log scale) and mAP against the epoch, runs overlaid, into curves.png (default:
inside the one run's folder; give --output for several runs), replacing an
older picture. The numbers go beside it as curves.csv. Needs the plot extra:
pip install -e '.[plot]' in this repository, or bash scripts/setup.sh plot.

examples:
  reid-prune plot runs/demo
  reid-prune plot runs/cuhk03_r18 runs/cuhk03_r18_s1 --output runs/seeds.png
"""),
}


def add_arguments(parsers: Mapping[str, argparse.ArgumentParser]) -> None:
    """Add the options of each command of :data:`COMMANDS` to its parser (``parsers[name]``)."""
    p_sens, p_visrank, p_plot = (parsers[name] for name in COMMANDS)
    for p in (p_sens, p_visrank):
        p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
        p.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures and tables")
        p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the queries or identities drawn (default: 0)")
    p_sens.add_argument("--method", help="pruning method (default: the config's prune.method), e.g. haoli")
    p_sens.add_argument("--rates", type=fraction_list, default=[0.1, 0.3, 0.5, 0.7, 0.9], metavar="R,R,...",
                        help="fractions pruned in each group (default: 0.1,0.3,0.5,0.7,0.9)")
    p_sens.add_argument("--scope", choices=("internal", "all"),
                        help="which groups (default: the config's prune.scope; its default auto means internal here)")
    p_sens.add_argument("--target-macs", type=float, metavar="F", help="fraction of the MACs layer_rates.yaml "
                        "keeps (default: the config's prune.target_macs, else 0.5)")
    p_sens.add_argument("--subset-ids", type=int_at_least(0), default=0, metavar="N",
                        help="evaluate on N test identities drawn with --seed (default: 0 = all)")
    p_sens.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="method setting, e.g. --option finetune_steps=0 (repeatable)")
    choice = p_visrank.add_mutually_exclusive_group()
    choice.add_argument("--queries", type=int_at_least(1), default=8, metavar="N", help="draw N random queries (default: 8)")
    choice.add_argument("--query-ids", type=int, nargs="+", metavar="PID", help="draw every query of these person ids")
    p_visrank.add_argument("--topk", type=int_at_least(1), default=10, metavar="K", help="matches per query (default: 10)")
    p_plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run folders holding metrics.jsonl")
    p_plot.add_argument("--output", metavar="FILE.png", help="the picture (default: RUN_DIR/curves.png for one "
                        "run); the numbers go beside it as FILE.csv")
