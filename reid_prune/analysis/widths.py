"""Which channels a pruning kept: per channel group, the kept fraction and width (``widths.png``).

``reid-prune prune`` writes the rows into ``report.json`` (key ``widths``) and draws them
beside it as ``widths.png``; the bench's pruned cells get both the same way, since each
cell is a :func:`~reid_prune.jobs.prune.prune_checkpoint` run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from ..pruners.groups import find_channel_groups
from .plotting import new_figure, save_figure


def kept_widths(pruned: nn.Module, original_widths: Mapping[str, Sequence[int]]) -> list[dict[str, Any]]:
    """Channels kept by every channel group of ``pruned``, against the widths it had before pruning.

    Args:
        pruned: the model after pruning (any width; its groups are found by tracing it).
        original_widths: :func:`~reid_prune.checkpoint.module_widths` of the model before
            pruning: {module name: [out, in] or [C]}.

    Returns:
        One row per group, in forward order, every prunable group included (those no method
        touched keep fraction 1): ``{"group", "kind" (internal | stream), "channels" (before),
        "kept", "fraction" (kept / channels)}``.

    Raises:
        ValueError: ``original_widths`` lacks a group's producer (the widths of another architecture).
    """
    rows = []
    for group in find_channel_groups(pruned, scope="all", include_last_stage=True):
        producer = group.producers[0]
        if producer not in original_widths:
            raise ValueError(f"the original widths have no layer {producer!r}; pass module_widths of the same "
                             "architecture before pruning")
        before = int(original_widths[producer][0])
        rows.append({"group": group.name, "kind": group.kind, "channels": before, "kept": group.channels,
                     "fraction": round(group.channels / before, 6)})
    return rows


def plot_widths(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "") -> bool:
    """Bar chart of the kept fraction per group, labelled with the kept and original widths.

    The figure is ``max(6, 0.45 * groups + 1.5)`` x 4.5 inches at
    :data:`~reid_prune.analysis.plotting.DPI` pixels per inch; internal groups are blue,
    stream groups orange, in forward order.

    Returns:
        True when ``path`` was written, False when matplotlib is missing.
    """
    figure = new_figure(max(6.0, 0.45 * len(rows) + 1.5), 4.5)
    if figure is None:
        return False
    ax = figure.subplots()
    colours = ["tab:blue" if r["kind"] == "internal" else "tab:orange" for r in rows]
    positions = range(len(rows))
    bars = ax.bar(positions, [r["fraction"] for r in rows], color=colours)
    ax.bar_label(bars, labels=[f"{r['kept']}/{r['channels']}" for r in rows], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(list(positions), [r["group"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.25)  # room for the labels above full-width bars
    ax.set_ylabel("fraction of channels kept")
    ax.set_title(title or "kept channels per group (blue: inside blocks, orange: streams)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    save_figure(figure, path)
    return True
