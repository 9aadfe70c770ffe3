"""The results: one row per model and evaluation, their mean ± std per row name, results.md / .csv / .json.

Every group of rows (one name, over its seeds) is compared with the ``random`` method at
the same budget: it is marked ``above`` or ``below`` when the means of mAP differ by more
than twice the larger of the two sample standard deviations.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..distributed import env_world_size
from ..outputs import atomic_path
from .cells import write_json
from .configs import finetune_seeds_of, latency_batch_sizes
from .latency import compute_text, latency_compute, threads_text
from .keys import eval_settings
from .plan import Cell, Plan, describe_budget
from .plots import PLOT_NOTE, curve_plot, pareto_plot, widths_plot
from .schema import Bench

SCORES = ("mAP", "rank1", "mINP")
KINDS = {"train": "baseline", "prune": "pruned", "scratch": "scratch", "anchor": "anchor", "dense": "dense"}
CONTROL = "random"  # the registered method every other method is compared with
# The pruners meet a MACs budget within 0.02 (pruners/budget.py): a row further from the control's
# MACs (AFP+PRC stops where its tolerance says) is not at the same budget.
SAME_BUDGET = 0.02


def _reference(cell: Cell, plan: Plan, prune_arch: str) -> Cell:
    """The unpruned ``prune_arch`` baseline whose MACs a cell's are compared with."""
    root = cell
    while root.parent is not None:
        root = root.parent
    return next(c for c in plan.cells if c.kind == "train" and c.arch == prune_arch and c.dataset == root.dataset
                and c.seed == root.seed)


def _method(cell: Cell) -> str:
    if cell.kind == "prune":
        return cell.method.name
    return {"anchor": f"torch_pruning_{cell.anchor.importance}" if cell.anchor else "", "scratch": "scratch"}.get(
        cell.kind, "")


def result_rows(plan: Plan, prune_arch: str, results: dict[str, dict[str, Any]],
                scores: dict[tuple[str, str], dict[str, Any]],
                latencies: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One flat record per result row whose cell has finished and been scored."""
    rows = []
    for spec in plan.rows:
        cell = spec.cell
        result, scored = results.get(cell.key), scores.get((cell.key, spec.dataset))
        if result is None or scored is None:
            continue
        reference = results.get(_reference(cell, plan, prune_arch).key)
        metrics, pruned = scored["metrics"], scored["pruned_metrics"]
        row = {
            "scenario": spec.scenario, "name": spec.name, "label": cell.label, "kind": KINDS[cell.kind],
            "arch": cell.arch, "method": _method(cell), "budget": cell.budget, "target_macs": cell.target_macs,
            "same_widths_as": cell.same_widths.label if cell.same_widths is not None else "",
            "target_latency": cell.target_latency,
            "pretrain": cell.pretrain, "finetune": "" if cell.kind == "train" else cell.dataset,
            "dataset": spec.dataset, "seed": cell.seed, "finetune_seed": cell.finetune_seed,
            "params": result["params"], "macs": result["macs"],
            "macs_kept": round(result["macs"] / reference["macs"], 4) if reference else None,
        }
        row.update(latencies.get(cell.key, {}))  # latency_ms_batchB, latency_ratio_batchB (_min, _max)
        row.update({k: round(metrics[k], 2) for k in ("mAP", "rank1", "rank5", "mINP")})
        row.update({f"pruned_{k}": round(pruned[k], 2) if pruned else None for k in ("mAP", "rank1")})
        row.update(prune_seconds=result.get("prune_seconds"), wall_seconds=result["wall_seconds"],
                   scored_by=scored["scored_by"], cell=cell.key)
        rows.append(row)
    return rows


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _text(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _by(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per row name and table (scenario, data): n, means, sample stds, and the comparison with random."""
    groups = []
    for (scenario, dataset, pretrain, finetune, name), runs in _by(
            rows, lambda r: (r["scenario"], r["dataset"], r["pretrain"], r["finetune"], r["name"])).items():
        first = runs[0]
        group = {"scenario": scenario, "dataset": dataset, "pretrain": pretrain, "finetune": finetune, "name": name,
                 "label": first["label"], "kind": first["kind"], "method": first["method"], "budget": first["budget"],
                 "same_widths_as": first.get("same_widths_as", ""),
                 "n": len(runs), "seeds": [[r["seed"], r["finetune_seed"]] for r in runs]}
        for key in SCORES:
            group[key], group[f"{key}_std"] = mean_std([r[key] for r in runs])
        for key in ("params", "macs", "macs_kept", "prune_seconds"):
            values = [r[key] for r in runs if r.get(key) is not None]
            group[key] = statistics.fmean(values) if values else None
        for key in (k for k in first if k.startswith("latency_")):
            group[key], std = mean_std([r[key] for r in runs])
            if not key.endswith(("_min", "_max")):  # a ratio's min and max: their means only
                group[f"{key}_std"] = std
        groups.append(group)
    for group in groups:
        # The control plans its own widths; Random at another method's widths is a row of its own.
        control = next((g for g in groups if g["method"] == CONTROL and g["kind"] == "pruned"
                        and not g["same_widths_as"] and all(g[k] == group[k] for k in ("scenario", "dataset", "pretrain", "finetune", "budget"))),
                       None)
        group["vs_random"] = versus(group, control)
        dense = next((g for g in groups if g["kind"] == "dense"
                      and all(g[k] == group[k] for k in ("scenario", "dataset", "pretrain", "finetune"))), None)
        # The loss of pruning: against the unpruned model given the same fine-tuning, not the source itself.
        group["vs_dense"] = (f"{group['mAP'] - dense['mAP']:+.1f}" if dense is not None
                             and group["kind"] in ("pruned", "scratch", "anchor") else "")
    return groups


def versus(group: dict[str, Any], control: dict[str, Any] | None) -> str:
    """``above (+d; 2 x s)`` / ``below`` when the mAP means differ by more than twice the larger std, else why not."""
    if control is None or group["kind"] == "baseline":
        return ""
    if group is control:
        return "control"
    if group["macs_kept"] is None or control["macs_kept"] is None:
        return "–"
    if abs(group["macs_kept"] - control["macs_kept"]) > SAME_BUDGET:
        return f"other budget ({group['macs_kept']:.3f} kept)"
    if group["mAP_std"] is None or control["mAP_std"] is None:
        return "– (one seed)"
    diff, bound = group["mAP"] - control["mAP"], 2 * max(group["mAP_std"], control["mAP_std"])
    if abs(diff) <= bound:
        return f"within ({diff:+.1f}; 2 x std = {bound:.1f})"
    return f"{'above' if diff > 0 else 'below'} ({diff:+.1f}; 2 x std = {bound:.1f})"


def _table(headers: Sequence[str], lines: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A markdown table: the first ``text_columns`` columns left-aligned, the numbers right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _cells(group: dict[str, Any], latency_key: str | None) -> list[str]:
    """Cost, seeds and score columns of one group."""
    cost = [_text(group["macs_kept"], None, 3), _text(group["params"] / 1e6, None, 2),
            _text(group["macs"] / 1e9, None, 3)]
    if latency_key:
        cost.append(_text(group.get(latency_key), group.get(f"{latency_key}_std"), 2))
    cost.append(_text(group["prune_seconds"], None, 1))
    return cost + [str(group["n"])] + [_text(group[k], group[f"{k}_std"], 1) for k in SCORES]


def _intro(bench: Bench, plan: Plan, latency_key: str | None) -> list[str]:
    cfg = plan.cells[0].cfg
    e = eval_settings(cfg.to_dict())
    finetune = {label: finetune_seeds_of(bench, b) for b, label in zip(bench.budgets, plan.budgets)}
    seeds = (f"Baselines: seeds {bench.seeds}; each pruned model is fine-tuned with its baseline's seed."
             if all(s == [None] for s in finetune.values()) else
             f"Baselines: seeds {bench.seeds}. Fine-tuning seeds per budget: "
             + ", ".join(f"{label}: {s}" for label, s in finetune.items()) + ".")
    lines = [
        f"Input {cfg.data.height}x{cfg.data.width}. mAP, R-1 (rank-1) and mINP in %, on each dataset's query/gallery "
        f"split (Market-1501 protocol), of the model after its last epoch, scored with the {e['eval.metric']} "
        f"distance on the {e['model.retrieval_feature'].replace('_', ' ')} feature ({e['eval.ap']} AP"
        f"{', flipped images added' if e['eval.flip'] else ''}): mean ± sample standard deviation over the n runs "
        f"of each row (n). {seeds}",
        "GMACs: multiply-accumulates per image at batch 1. Parameters: the deployed network, without the identity "
        f"classifier used only in training. MACs kept: over the unpruned {bench.prune_arch.replace('resnet', 'ResNet')} "
        "the model came from (AFP+PRC stops where its accuracy tolerance says: the budget is only its cap). "
        "Prune s: seconds spent choosing and cutting channels (for methods that prune during fine-tuning, the "
        "fine-tuning).",
    ]
    if latency_key:
        lines.append(f"CPU latency: milliseconds per image with {threads_text(bench)}, {compute_text(plan)}, median "
                     "of the turns in which the models are timed one after the other, after training.")
    if any(m.name == CONTROL for m in bench.methods):
        lines.append("vs Random: the mAP mean minus that of Random at the same budget; `above` / `below` when the "
                     "difference is larger than twice the larger of the two standard deviations.")
    if bench.dense:
        lines.append("Dense (fine-tuned): the unpruned source fine-tuned with the same schedule and seeds as the "
                     "pruned models; vs Dense: a row's mAP mean minus that of Dense, the loss that pruning costs.")
    lines.append("Budgets: " + ", ".join(describe_budget(label, value, bench.prune_arch.replace("resnet", "ResNet"))
                                          for label, value in plan.budgets.items()) + ".")
    return lines


def markdown_report(bench: Bench, plan: Plan, rows: list[dict[str, Any]], groups: list[dict[str, Any]], *,
                    command: str, plots: dict[str, bool], final: bool, pending: int) -> str:
    """results.md: one in-domain table per compared dataset, then one table per cross-domain pair."""
    batches = latency_batch_sizes(bench)
    batch = batches[0] if batches else None
    latency_key = f"latency_ms_batch{batch}" if batch and any(f"latency_ms_batch{batch}" in r for r in rows) else None
    costs = ["MACs kept", "Parameters (M)", "GMACs"]
    if latency_key:
        costs.append(f"CPU ms/image (batch {batch}, {threads_text(bench)}, {compute_text(plan)})")
    costs += ["prune s", "n", "mAP", "R-1", "mINP"]
    lines = [f"# Benchmark {bench.name}", ""] + ([f"Produced by `{command}`.", ""] if command else [])
    lines += [f"- {line}" for line in _intro(bench, plan, latency_key)] + [""]
    if pending:
        lines += [f"**Partial results: {pending} of {len(plan.cells)} cells are not finished yet.**", ""]
    control = any(g["vs_random"] for g in groups)
    dense = any(g["vs_dense"] for g in groups)
    budget_order = {label: i for i, label in enumerate(plan.budgets)}
    for dataset in bench.compare:
        members = [g for g in groups if g["scenario"] == "in_domain" and g["dataset"] == dataset]
        members.sort(key=lambda g: budget_order.get(g["budget"], -1))  # baselines, then one budget after the other
        table = [[g["name"], *_cells(g, latency_key)] + ([g["vs_random"]] if control else [])
                 + ([g["vs_dense"]] if dense else []) for g in members]
        if table:
            headers = ["Networks", *costs] + (["vs Random (mAP)"] if control else []) + (
                ["vs Dense (mAP)"] if dense else [])
            lines += [f"## In-domain: {dataset}", "", _table(headers, table), ""]
    for scenario in bench.cross_domain:
        a, b = scenario.source, scenario.target
        table = [[g["name"], f"pruned and fine-tuned on {g['finetune']}" if g["finetune"]
                  else f"no pruning, no fine-tuning (trained on {a})", *_cells(g, latency_key)]
                 for g in groups if g["scenario"] == "cross_domain" and g["pretrain"] == a and g["dataset"] == b]
        if table:
            lines += [f"## Cross-domain: trained on {a}, evaluated on {b}", "",
                      _table(["Networks", "adaptation", *costs], table, 2), ""]
    hours = sum({r["cell"]: r["wall_seconds"] for r in rows}.values()) / 3600
    lines += [f"Compute: {hours:.2f} h of training, pruning and fine-tuning over {len({r['cell'] for r in rows})} "
              "cells (per-model wall times in results.csv).", ""]
    if not final:
        lines += ["pareto.png and widths.png are drawn when the run ends.", ""]
    lines += [line for name, drawn in plots.items() if drawn for line in (f"![{name}]({name}.png)", "")]
    if False in plots.values():
        lines += [PLOT_NOTE, ""]
    lines += [f"Note: {note}." for note in plan.notes] + ([""] if plan.notes else [])
    return "\n".join(lines)


def write_results(bench: Bench, plan: Plan, out: Path, cells_dir: Path, results: dict[str, dict[str, Any]],
                  scores: dict[tuple[str, str], dict[str, Any]], latencies: dict[str, dict[str, float]], *,
                  command: str = "", final: bool = True) -> dict[str, Any]:
    """Write results.csv, results.json, results.md and, when ``final``, the plots; returns the JSON content."""
    rows = result_rows(plan, bench.prune_arch, results, scores, latencies)
    groups = summarize(rows)
    pending = sum(1 for cell in plan.cells if cell.key not in results)
    plots = {"pareto": pareto_plot(bench, groups, out / "pareto.png"),
             "curve": curve_plot(bench, rows, out / "curve.png"),
             "widths": widths_plot(plan, cells_dir, out / "widths.png")} if final and rows else {}
    compute = latency_compute(plan)
    summary = {
        "bench": bench.name, "command": command, "complete": pending == 0, "pending_cells": pending,
        "budgets": plan.budgets, "seeds": bench.seeds,
        "finetune_seeds": {label: finetune_seeds_of(bench, b) for b, label in zip(bench.budgets, plan.budgets)},
        "evaluation": eval_settings(plan.cells[0].cfg.to_dict()),
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "world_size": env_world_size(),
                        "latency_threads": bench.latency_threads or torch.get_num_threads(),
                        "latency_precision": compute.precision, "latency_memory_format": compute.memory_format_name,
                        "machine": platform.machine(), "python": platform.python_version()},
        "plots": plots, "notes": plan.notes, "rows": rows, "groups": groups,
    }
    write_json(out / "results.json", summary)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(markdown_report(bench, plan, rows, groups, command=command, plots=plots,
                                                    final=final, pending=pending))
    return summary
