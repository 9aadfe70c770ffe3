"""Learning curves: loss, learning rate and mAP per epoch from training runs' ``metrics.jsonl``.

``reid-prune plot RUN_DIR [RUN_DIR ...]`` reads each run's ``metrics.jsonl`` (one JSON
record per epoch, written by the trainer: ``epoch`` (0-based), ``loss`` and its parts,
``lr`` (the last step's), and on evaluated epochs ``mAP``, ``rank1``, ...), writes
``curves.csv`` (one row per run and epoch, columns :data:`CSV_COLUMNS`, epochs 1-based)
and draws ``curves.png``: three panels side by side, with the runs overlaid.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from .plotting import new_figure, save_figure

CSV_COLUMNS = ("run", "epoch", "loss", "lr", "mAP", "rank1")
PANELS = (("loss", "training loss"), ("lr", "learning rate"), ("mAP", "mAP (%)"))


def read_metrics_file(path: str | Path) -> tuple[list[dict[str, Any]], bool]:
    """The epoch records of a ``metrics.jsonl`` file, in file order, and whether a cut-short last line was dropped.

    The trainer appends one line per epoch, so a kill while it writes leaves the last line cut
    short: that line is dropped with a warning naming the file (its epoch is trained again on
    ``--resume``, as last.pt was not written after it). Any other bad line is an error.

    Raises:
        ValueError: a line before the last that is not JSON, or any line that is not a record with an
            integer ``epoch`` (the file and line are named).
    """
    path = Path(path)
    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records, dropped = [], False
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == lines[-1][0]:  # the expected trace of a kill during the append
                warnings.warn(f"{path}: dropped its last line (line {number}), cut short by a stop while it was "
                              f"written: {line.strip()[:60]}", UserWarning, stacklevel=2)
                dropped = True
                continue
            raise ValueError(f"{path}, line {number}: not a JSON record ({exc}); only the last line can be cut short "
                             "by a stop, so the file was changed by something else: restore it, or delete that "
                             "line") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise ValueError(f"{path}, line {number}: expected a record of one epoch with an integer \"epoch\", "
                             f"got {line.strip()[:80]}")
        records.append(record)
    return records, dropped


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl``, in file order (:func:`read_metrics_file`: a cut-short last
    line is dropped with a warning).

    Raises:
        FileNotFoundError: no metrics.jsonl in ``run_dir``.
        ValueError: metrics.jsonl is a folder, a bad line (named), or a file without records.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a metrics file; move it away and pass a folder written by "
                         "reid-prune train")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a folder written by reid-prune train")
    records, _ = read_metrics_file(path)
    if not records:
        raise ValueError(f"{path} holds no epoch yet")
    return records


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Distinct names of the runs: their folder names, else their paths, else the paths numbered in order."""
    for names in ([Path(r).name or str(r) for r in run_dirs], [str(r) for r in run_dirs]):
        if len(set(names)) == len(names):
            return names
    return [f"{r} ({i})" for i, r in enumerate(run_dirs, 1)]


def curve_rows(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """{run label: records} -> CSV rows (the epochs as metrics.jsonl counts them, from 1; mAP and rank1 empty
    on epochs not evaluated)."""
    return [{"run": label, "epoch": r["epoch"], "loss": r.get("loss", ""), "lr": r.get("lr", ""),
             "mAP": r.get("mAP", ""), "rank1": r.get("rank1", "")}
            for label, records in runs.items() for r in records]


def write_curves_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot_learning_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> bool:
    """Draw loss, learning rate and mAP against the epoch, one line per run.

    The figure is 15 x 4 inches at :data:`~reid_prune.analysis.plotting.DPI` pixels per inch;
    the learning rate is on a log scale. Returns False without matplotlib.
    """
    figure = new_figure(15, 4)
    if figure is None:
        return False
    axes = figure.subplots(1, len(PANELS))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for colour, run in enumerate(runs):
        for ax, (key, _) in zip(axes, PANELS):
            points = [(r["epoch"], r[key]) for r in rows if r["run"] == run and r[key] != ""]
            if points:
                # A marker wherever a line alone would not show: evaluations, and single-epoch runs.
                marker = "o" if key == "mAP" or len(points) == 1 else None
                ax.plot(*zip(*points), marker=marker, markersize=3, color=f"C{colour}", label=run)
    for ax, (key, label) in zip(axes, PANELS):
        ax.set(xlabel="epoch", ylabel=label, title=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if key == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(figure, path)
    return True
