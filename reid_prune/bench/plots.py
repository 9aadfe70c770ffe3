"""The bench's figures: ``pareto.png`` (mAP against MACs and measured latency) and ``widths.png`` (what each method cut).

Both need matplotlib (the ``plot`` extra); each function returns True when it drew its
file, False when matplotlib is missing and None when there is nothing to draw.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..analysis.plotting import missing_note, new_figure, save_figure
from .cells import read_json
from .configs import latency_batch_sizes
from .plan import Plan
from .schema import Bench

PLOT_NOTE = missing_note("pareto.png and widths.png")
MARKERS = "os^Dvp*hX"  # one per budget


def _colours(labels: list[str]) -> dict[str, Any]:
    """One colour per label, the same in every panel."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(dict.fromkeys(labels))}


def _by_label(groups: Any) -> dict[str, list[dict[str, Any]]]:
    """Groups by label (with the fine-tuning data in cross-domain tables), in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        label = g["label"] if g["scenario"] == "in_domain" else f"{g['label']}, fine-tuned on {g['finetune']}"
        out.setdefault(label, []).append(g)
    return out


def pareto_plot(bench: Bench, groups: list[dict[str, Any]], path: Path) -> bool | None:
    """mAP (mean ± std over seeds) against GMACs and against CPU latency, one row of panels per results table."""
    panels = [(f"{d} (in-domain)", [g for g in groups if g["scenario"] == "in_domain" and g["dataset"] == d])
              for d in bench.compare]
    panels += [(f"trained on {c.source}, evaluated on {c.target}",
                [g for g in groups if g["scenario"] == "cross_domain" and g["pretrain"] == c.source
                 and g["dataset"] == c.target]) for c in bench.cross_domain]
    panels = [(title, members) for title, members in panels if members]
    if not panels:
        return None
    batches = latency_batch_sizes(bench)
    batch = batches[0] if batches else None
    axes_x = [("macs", "GMACs per image", 1e-9)]
    if batch and any(f"latency_ms_batch{batch}" in g for g in groups):
        axes_x.append((f"latency_ms_batch{batch}", f"CPU ms per image (batch {batch})", 1.0))
    figure = new_figure(7.0 * len(axes_x), 5.0 * len(panels))
    if figure is None:
        return False
    colours = _colours([g["label"] for g in groups])
    budgets = list(dict.fromkeys(g["budget"] for g in groups if g["budget"]))
    grid = figure.subplots(len(panels), len(axes_x), squeeze=False)
    for row, (title, members) in zip(grid, panels):
        for ax, (key, xlabel, scale) in zip(row, axes_x):
            baselines = sorted((g for g in members if g["kind"] == "baseline"), key=lambda g: g[key])
            if baselines:
                ax.errorbar([g[key] * scale for g in baselines], [g["mAP"] for g in baselines],
                            yerr=[g["mAP_std"] or 0 for g in baselines], fmt="-o", color="black", capsize=3,
                            label="baselines" if members[0]["scenario"] == "in_domain" else "not pruned")
                for g in baselines:
                    ax.annotate(g["name"], (g[key] * scale, g["mAP"]), textcoords="offset points", xytext=(5, -12),
                                fontsize=8)
            for label, points in _by_label(g for g in members if g["kind"] != "baseline").items():
                points.sort(key=lambda g: g[key])
                colour = colours[points[0]["label"]]
                # A method's budgets joined: its own trade-off curve.
                ax.plot([g[key] * scale for g in points], [g["mAP"] for g in points], "-", color=colour, alpha=0.5,
                        linewidth=1)
                for g in points:
                    ax.errorbar([g[key] * scale], [g["mAP"]], yerr=[g["mAP_std"] or 0],
                                xerr=[(g.get(f"{key}_std") or 0) * scale], color=colour, capsize=3,
                                # A row without a budget (the dense reference) is a star.
                                fmt=MARKERS[budgets.index(g["budget"]) % len(MARKERS)] if g["budget"] else "*",
                                label=label if g is points[0] else None)
            marks = ", ".join(f"{MARKERS[i % len(MARKERS)]} = {b}" for i, b in enumerate(budgets))
            ax.set(title=f"{title}; budgets: {marks}" if len(budgets) > 1 else title, xlabel=xlabel,
                   ylabel="mAP (%), mean ± std over seeds")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(figure, path)
    return True


def widths_plot(plan: Plan, cells_dir: Path, path: Path) -> bool | None:
    """The kept fraction of every channel group for each method: one heat map per budget (methods x groups).

    In-domain pruned and anchor cells of the first dataset and baseline seed, the fraction
    averaged over fine-tuning seeds, from the rows :func:`~reid_prune.analysis.widths.kept_widths`
    wrote into each cell's ``report.json`` (``widths``).
    """
    specs = [r for r in plan.rows if r.scenario == "in_domain" and r.cell.kind in ("prune", "anchor")]
    if not specs:
        return None
    first = specs[0].cell
    fractions: dict[str, dict[str, dict[str, list[float]]]] = {}  # budget -> label -> group -> fractions
    order: dict[str, None] = {}
    for spec in specs:
        cell = spec.cell
        report = read_json(cells_dir / cell.key / "report.json")
        if cell.dataset != first.dataset or cell.seed != first.seed or report is None:
            continue
        for item in report["widths"]:
            order.setdefault(item["group"])
            fractions.setdefault(cell.budget, {}).setdefault(cell.label, {}).setdefault(item["group"], []).append(
                item["fraction"])
    if not fractions:
        return None
    labels = list(dict.fromkeys(label for per_label in fractions.values() for label in per_label))
    names = list(order)
    figure = new_figure(max(8.0, 0.6 * len(names) + 3.0), sum(0.3 * len(p) + 1.8 for p in fractions.values()))
    if figure is None:
        return False
    axes = figure.subplots(len(fractions), 1, squeeze=False,
                           height_ratios=[len(p) + 4 for p in fractions.values()])[:, 0]
    for ax, (budget, per_label) in zip(axes, fractions.items()):
        shown = [label for label in labels if label in per_label]
        kept = [[statistics.fmean(per_label[label].get(n, [1.0])) for n in names] for label in shown]
        image = ax.imshow(kept, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, row in enumerate(kept):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if value > 0.6 else "white")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.set_title(f"budget {budget} ({plan.budgets[budget]:.3f} of the MACs): fraction of channels kept per group",
                     fontsize=9)
        figure.colorbar(image, ax=ax, fraction=0.02)
    save_figure(figure, path)
    return True
