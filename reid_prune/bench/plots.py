"""The bench's figures: ``pareto.png`` (mAP against MACs and latency), ``curve.png`` (mAP against MACs kept, with
confidence bands) and ``widths.png`` (what each method cut).

They need matplotlib (the ``plot`` extra); each function returns True when it drew its
file, False when matplotlib is missing and None when there is nothing to draw.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Iterable

from ..analysis.plotting import missing_note, new_figure, save_figure
from .cells import read_json
from .configs import latency_batch_sizes
from .latency import ratio_batch
from .plan import Plan
from .schema import Bench
from .stats import t_interval

PLOT_NOTE = missing_note("pareto.png, curve.png and widths.png")
MARKERS = "os^Dvp*hX"  # one per budget
LEVEL = 0.95  # the confidence level of curve.png's bands


def _colours(labels: list[str]) -> dict[str, Any]:
    """One colour per label, the same in every panel."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(dict.fromkeys(labels))}


def _display(record: dict[str, Any]) -> str:
    """A row's or group's label, with the fine-tuning data in cross-domain tables (and the pruning data, when other)."""
    if record["scenario"] == "in_domain":
        return record["label"]
    pruned_on = record.get("prune_data") not in ("", None, record["finetune"])
    return f"{record['label']}, " + (f"pruned on {record['prune_data']}, " if pruned_on else "") + (
        f"fine-tuned on {record['finetune']}")


def _by_label(groups: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Groups by label (with the fine-tuning data in cross-domain tables), in order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for g in groups:
        out.setdefault(_display(g), []).append(g)
    return out


def _panels(bench: Bench, records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One (title, records) per results table: each compared dataset, then each cross-domain pair (empty: left out)."""
    panels = [(f"{d} (in-domain)", [r for r in records if r["scenario"] == "in_domain" and r["dataset"] == d])
              for d in bench.compare]
    panels += [(f"trained on {c.source}, evaluated on {c.target}",
                [r for r in records if r["scenario"] == "cross_domain" and r["pretrain"] == c.source
                 and r["dataset"] == c.target]) for c in bench.cross_domain]
    return [(title, members) for title, members in panels if members]


def _xerr(g: dict[str, Any], key: str, scale: float) -> list[list[float]]:
    """A point's horizontal bar: min-max (a latency ratio), else ± its std."""
    if f"{key}_min" in g and f"{key}_max" in g:
        return [[max(0.0, g[key] - g[f"{key}_min"])], [max(0.0, g[f"{key}_max"] - g[key])]]
    spread = (g.get(f"{key}_std") or 0) * scale
    return [[spread], [spread]]


def pareto_plot(bench: Bench, groups: list[dict[str, Any]], path: Path) -> bool | None:
    """mAP (mean ± std over seeds) against GMACs and against the latency ratio to the source, one row of panels
    per results table.

    The latency panel's x is the ratio at batch 32 (the largest batch timed when 32 is not) of
    each model's CPU time to its source model's, timed in the same rounds (mean over runs of
    the median over rounds; bars: mean min and max).
    """
    panels = _panels(bench, groups)
    if not panels:
        return None
    batch = ratio_batch(latency_batch_sizes(bench))
    axes_x = [("macs", "GMACs per image", 1e-9)]
    if batch and any(f"latency_ratio_batch{batch}" in g for g in groups):
        axes_x.append((f"latency_ratio_batch{batch}", f"CPU latency / the source model's (batch {batch}; median of "
                       "interleaved rounds, bars min-max)", 1.0))
    figure = new_figure(7.0 * len(axes_x), 5.0 * len(panels))
    if figure is None:
        return False
    colours = _colours([g["label"] for g in groups])
    budgets = list(dict.fromkeys(g["budget"] for g in groups if g["budget"]))
    grid = figure.subplots(len(panels), len(axes_x), squeeze=False)
    for row, (title, members) in zip(grid, panels):
        for ax, (key, xlabel, scale) in zip(row, axes_x):
            shown = [g for g in members if g.get(key) is not None]
            baselines = sorted((g for g in shown if g["kind"] == "baseline"), key=lambda g: g[key])
            if baselines:
                ax.errorbar([g[key] * scale for g in baselines], [g["mAP"] for g in baselines],
                            yerr=[g["mAP_std"] or 0 for g in baselines], fmt="-o", color="black", capsize=3,
                            label="baselines" if members[0]["scenario"] == "in_domain" else "not pruned")
                for g in baselines:
                    ax.annotate(g["name"], (g[key] * scale, g["mAP"]), textcoords="offset points", xytext=(5, -12),
                                fontsize=8)
            for label, points in _by_label(g for g in shown if g["kind"] != "baseline").items():
                points.sort(key=lambda g: g[key])
                colour = colours[points[0]["label"]]
                # A method's budgets joined: its own trade-off curve.
                ax.plot([g[key] * scale for g in points], [g["mAP"] for g in points], "-", color=colour, alpha=0.5,
                        linewidth=1)
                for g in points:
                    ax.errorbar([g[key] * scale], [g["mAP"]], yerr=[g["mAP_std"] or 0], xerr=_xerr(g, key, scale),
                                color=colour, capsize=3,
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


def curve_data(rows: list[dict[str, Any]], level: float = LEVEL) -> dict[str, dict[str, list[Any]]]:
    """What curve.png draws for the rows of one results table: per label, the points sorted by MACs kept.

    Per label (the row label without the budget; with the fine-tuning data in cross-domain
    tables) and budget, over its runs: ``xs`` the mean MACs kept, ``means`` the mean mAP,
    ``lows`` / ``highs`` its two-sided Student t interval at ``level`` (None for one run). The
    dense reference (``kind`` dense, MACs kept 1.0) is its own label and ends every other
    label's curve, so all curves meet at it. Baselines are left out.
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["kind"] != "baseline" and row.get("macs_kept") is not None:
            runs.setdefault((_display(row), row["budget"]), []).append(row)
    points: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
    for (label, _), members in runs.items():
        mean, low, high = t_interval([r["mAP"] for r in members], level)
        points.setdefault(label, []).append((statistics.fmean(r["macs_kept"] for r in members), mean, low, high))
    dense = [label for (label, _), members in runs.items() if members[0]["kind"] == "dense"]
    out = {}
    for label, items in points.items():
        items.sort(key=lambda p: p[0])
        if label not in dense:
            items += [p for d in dense[:1] for p in points[d]]
        out[label] = {name: [p[i] for p in items] for i, name in enumerate(("xs", "means", "lows", "highs"))}
    return out


def curve_plot(bench: Bench, rows: list[dict[str, Any]], path: Path, level: float = LEVEL) -> bool | None:
    """mAP against MACs kept, one curve per method with its t confidence band over runs (:func:`curve_data`).

    Drawn when the rows have at least two budgets or a dense reference; one panel per results table.
    """
    budgets = {r["budget"] for r in rows if r["budget"]}
    if len(budgets) < 2 and not any(r["kind"] == "dense" for r in rows):
        return None
    panels = [(title, curve_data(members, level)) for title, members in _panels(bench, rows)]
    panels = [(title, data) for title, data in panels if data]
    if not panels:
        return None
    figure = new_figure(9.0, 5.0 * len(panels))
    if figure is None:
        return False
    dense = {_display(r) for r in rows if r["kind"] == "dense"}
    colours = _colours([_display(r) for r in rows if r["kind"] not in ("baseline", "dense")])
    for ax, (title, data) in zip(figure.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        for label, d in data.items():
            # mAP lies in [0, 100]: a wide interval (few runs) is drawn only where mAP can be.
            lows = [m if low is None else max(low, 0.0) for m, low in zip(d["means"], d["lows"])]
            highs = [m if high is None else min(high, 100.0) for m, high in zip(d["means"], d["highs"])]
            if label in dense:
                ax.errorbar(d["xs"], d["means"], yerr=[[m - lo for m, lo in zip(d["means"], lows)],
                                                       [h - m for m, h in zip(d["means"], highs)]],
                            fmt="*", markersize=12, color="black", capsize=4, zorder=3, label=label)
                continue
            # The method's own budgets solid; dashed, the join to the dense reference that ends its curve.
            own = len(d["xs"]) - (1 if any(name in dense for name in data) else 0)
            ax.plot(d["xs"][:own], d["means"][:own], "-o", color=colours[label], markersize=4, linewidth=1.2,
                    label=label)
            ax.plot(d["xs"][own - 1:], d["means"][own - 1:], "--", color=colours[label], linewidth=1)
            ax.fill_between(d["xs"], lows, highs, color=colours[label], alpha=0.15, linewidth=0)
        ax.set(title=f"{title}: mAP against MACs kept", xlim=(0.0, 1.05), xlabel="MACs kept (fraction of the source model's)",
               ylabel=f"mAP (%), mean over runs; band: {level:.0%} t interval")
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
        ax.set_title(f"budget {budget} ({plan.budgets[budget]:.3g} of the MACs): fraction of channels kept per group",
                     fontsize=9)
        figure.colorbar(image, ax=ax, fraction=0.02)
    save_figure(figure, path)
    return True
