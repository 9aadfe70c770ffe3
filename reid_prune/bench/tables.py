"""The results: one row per model and evaluation, their mean ± std per row name, results.md / .csv / .json.

The pre-declared comparisons are paired contrasts on mAP (:func:`contrasts`): runs are paired by
their (source seed, fine-tuning seed), and each table's budget is one family, Holm-adjusted
(:mod:`.stats`); docs/bench.md, "Paired contrasts", states the rule.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

from ..distributed import env_world_size
from ..outputs import atomic_path
from .cells import write_json
from .configs import finetune_seeds_of, latency_batch_sizes
from .latency import compute_text, latency_compute, ratio_batch, threads_text
from .keys import eval_settings
from .plan import Cell, Plan, adaptation, describe_budget
from .plots import PLOT_NOTE, curve_plot, pareto_plot, widths_plot
from .schema import Bench
from .contrasts import ALPHA, COMPARED, CONTROL, LEVEL, contrasts, families_of, group_by, markdown_table

SCORES = ("mAP", "rank1", "mINP")
# Rounded in the files only: the tables round means of the full values once (17.1548 -> 17.2, not 17.15 -> 17.1).
ROUNDED = ("mAP", "rank1", "rank5", "mINP", "pruned_mAP", "pruned_rank1")
KINDS = {"train": "baseline", "prune": "pruned", "scratch": "scratch", "anchor": "anchor", "dense": "dense"}


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
    """One flat record per result row whose cell has finished and been scored; its scores unrounded
    (:func:`written` rounds them for results.csv and results.json)."""
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
            "prune_data": cell.pruned_on,  # the data a pruned or anchor model's pruning read
            "dataset": spec.dataset, "seed": cell.seed, "finetune_seed": cell.finetune_seed,
            "params": result["params"], "macs": result["macs"],
            "macs_kept": round(result["macs"] / reference["macs"], 4) if reference else None,
        }
        row.update(latencies.get(cell.key, {}))  # latency_ms_batchB, latency_ratio_batchB (_min, _max)
        row.update({k: metrics[k] for k in ("mAP", "rank1", "rank5", "mINP")})  # rounded once: written(), _text()
        row.update({f"pruned_{k}": pruned[k] if pruned else None for k in ("mAP", "rank1")})
        row.update(prune_seconds=result.get("prune_seconds"), wall_seconds=result["wall_seconds"],
                   # Steps after the source (the method's own counted; scratch: all of its training), and x MACs kept.
                   train_steps=result.get("train_steps"), mac_weighted_steps=result.get("mac_weighted_steps"),
                   scored_by=scored["scored_by"], cell=cell.key)
        if row["mac_weighted_steps"] is None and row["train_steps"] and row["macs_kept"]:
            row["mac_weighted_steps"] = round(row["train_steps"] * row["macs_kept"], 2)  # scratch: one width
        rows.append(row)
    return rows


def written(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as results.csv and results.json hold it: scores (percent) rounded to 2 decimals."""
    return {k: round(v, 2) if k in ROUNDED and v is not None else v for k, v in row.items()}


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _text(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per row name and table (scenario, data): n, means, sample stds, and the mAP difference with Dense."""
    groups = []
    for (scenario, dataset, pretrain, finetune, name), runs in group_by(
            rows, lambda r: (r["scenario"], r["dataset"], r["pretrain"], r["finetune"], r["name"])).items():
        first = runs[0]
        group = {"scenario": scenario, "dataset": dataset, "pretrain": pretrain, "finetune": finetune, "name": name,
                 "label": first["label"], "kind": first["kind"], "method": first["method"], "budget": first["budget"],
                 "same_widths_as": first.get("same_widths_as", ""), "prune_data": first.get("prune_data", ""),
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
        dense = next((g for g in groups if g["kind"] == "dense"
                      and all(g[k] == group[k] for k in ("scenario", "dataset", "pretrain", "finetune"))), None)
        # The loss of pruning: against the unpruned model given the same fine-tuning, not the source itself.
        # A difference of means, to read the table by; its paired test is the "dense" contrast (contrasts()).
        group["vs_dense"] = (f"{group['mAP'] - dense['mAP']:+.1f}" if dense is not None
                             and group["kind"] in COMPARED else "")
    return groups


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
    source = bench.baseline(bench.prune_arch)
    if source.checkpoint:
        seeds += (f" The {source.label} source is the checkpoint {source.checkpoint}, adopted, not trained here: one "
                  f"model, so seeds {bench.seeds} vary only the fine-tuning of the models pruned from it.")
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
        lines.append(f"CPU latency / source: each model's CPU time per image over its source model's, with "
                     f"{threads_text(bench)}, {compute_text(plan)}, the two timed one after the other in each round "
                     "(median over the rounds; mean ± sd over the runs; milliseconds, min and max in results.csv).")
    if bench.train_steps:
        lines.append(f"Training after the source: {bench.train_steps} optimiser steps for every pruned, anchor and "
                     "dense model, the method's own training (between rounds or layers, or while it prunes) counted "
                     "and the fine-tuning taking the rest; scratch: the source's epochs plus as many steps "
                     "(results.csv: train_steps, mac_weighted_steps).")
    if any(m.name == CONTROL for m in bench.methods) or bench.dense:  # the references of every contrast
        lines.append(f"Paired contrasts, on mAP over the runs that share source and fine-tuning seeds: each pruned "
                     "row minus Random at its widths (criterion), Random at a method's widths minus Random at its own "
                     "(allocation), each pruned, anchor and scratch row minus Dense: mean difference, "
                     f"{100 * LEVEL:.0f}% t interval, and Holm's adjustment within each table's budget (family-wise "
                     f"{100 * ALPHA:.0f}%). Resolved: Holm p < {ALPHA} and the Holm-adjusted interval excludes 0.")
    if bench.dense:
        lines.append("Dense (fine-tuned): the unpruned source fine-tuned with the same schedule and seeds as the "
                     "pruned models; vs Dense: a row's mAP mean minus that of Dense, the loss that pruning costs "
                     "(its paired test is in the contrasts).")
    lines.append("Budgets: " + ", ".join(describe_budget(label, value, bench.prune_arch.replace("resnet", "ResNet"))
                                          for label, value in plan.budgets.items()) + ".")
    return lines


def markdown_report(bench: Bench, plan: Plan, rows: list[dict[str, Any]], groups: list[dict[str, Any]], *,
                    command: str, plots: dict[str, bool], final: bool, pending: int,
                    contrast: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None) -> str:
    """results.md: one in-domain table per compared dataset, then one table per cross-domain pair, each followed
    by its paired contrasts (``contrast``: :func:`contrasts` of ``rows`` unless given)."""
    contrast = contrasts(rows) if contrast is None else contrast
    batch = ratio_batch(latency_batch_sizes(bench))
    # The ratio to the source timed in the same rounds: stabler than milliseconds timed apart.
    latency_key = f"latency_ratio_batch{batch}" if batch and any(f"latency_ratio_batch{batch}" in r for r in rows) \
        else None
    costs = ["MACs kept", "Parameters (M)", "GMACs"]
    if latency_key:
        costs.append(f"CPU latency / source (batch {batch}, {threads_text(bench)}, {compute_text(plan)})")
    costs += ["prune s", "n", "mAP", "R-1", "mINP"]
    lines = [f"# Benchmark {bench.name}", ""] + ([f"Produced by `{command}`.", ""] if command else [])
    lines += [f"- {line}" for line in _intro(bench, plan, latency_key)] + [""]
    if pending:
        lines += [f"**Partial results: {pending} of {len(plan.cells)} cells are not finished yet.**", ""]
    dense = any(g["vs_dense"] for g in groups)
    budget_order = {label: i for i, label in enumerate(plan.budgets)}
    for dataset in bench.compare:
        members = [g for g in groups if g["scenario"] == "in_domain" and g["dataset"] == dataset]
        members.sort(key=lambda g: budget_order.get(g["budget"], -1))  # baselines, then one budget after the other
        table = [[g["name"], *_cells(g, latency_key)] + ([g["vs_dense"]] if dense else []) for g in members]
        if table:
            headers = ["Networks", *costs] + (["vs Dense (mAP)"] if dense else [])
            lines += [f"## In-domain: {dataset}", "", markdown_table(headers, table), ""]
            lines += families_of(contrast, "{dataset}", scenario="in_domain", dataset=dataset)
    for scenario in bench.cross_domain:
        a, b = scenario.source, scenario.target
        members = [g for g in groups if g["scenario"] == "cross_domain" and g["pretrain"] == a and g["dataset"] == b]
        near = ["vs Dense (mAP)"] if any(g["kind"] == "dense" for g in members) else []  # the scenario's own Dense
        table = [[g["name"], adaptation(g, a), *_cells(g, latency_key)] + [g["vs_dense"]] * len(near) for g in members]
        if table:
            lines += [f"## Cross-domain: trained on {a}, evaluated on {b}", "",
                      markdown_table(["Networks", "adaptation", *costs, *near], table, 2), ""]
            lines += families_of(contrast, "Fine-tuned on {finetune}", scenario="cross_domain", pretrain=a,
                                  dataset=b)
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
    exact = result_rows(plan, bench.prune_arch, results, scores, latencies)
    groups = summarize(exact)
    rows = [written(row) for row in exact]
    contrast = contrasts(rows)
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
        "contrasts": contrast[0], "contrast_families": contrast[1],
    }
    write_json(out / "results.json", summary)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(markdown_report(bench, plan, rows, groups, command=command, plots=plots,
                                                    final=final, pending=pending, contrast=contrast))
    return summary
