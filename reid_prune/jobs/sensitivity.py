"""Layer sensitivity: prune each channel group alone at several rates, evaluate, choose per-group rates.

The analysis of Li et al. ("Pruning Filters for Efficient ConvNets", Sec. 4.1, Figure 2)
and Distiller's ``sensitivity`` command, for re-ID: for every channel group the method
may cut, and every rate, a copy of the trained model is pruned in that group only (the
configured method chooses the channels; no fine-tuning) and its mAP is measured on the
test split (the validation split when ``data.val_ids`` carves one), or, for speed, on a
seeded subset of its identities (all their query and gallery images; mAP on a subset is
higher than on the whole split, so compare drops).

``reid-prune sensitivity`` writes into its output folder:

* ``sensitivity.csv``: one row per (group, rate), columns :data:`CSV_COLUMNS`;
* ``sensitivity.png``: mAP against the rate, one curve per group, one panel per stage
  (internal groups) plus one for the residual streams (needs the ``plot`` extra);
* ``layer_rates.yaml``: {group: rate} meeting ``target_macs`` with the least predicted loss
  (:func:`~reid_prune.analysis.allocation.allocate_rates`); ``reid-prune prune --layer-rates``
  takes it as it is, with the same method options and ``--scope``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from ..analysis.allocation import EPS, Allocation, allocate_rates, check_budget
from ..analysis.plotting import new_figure, save_figure
from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..config import Config
from ..data import ReIDDataset, Sample
from ..engine import evaluate_with_config
from ..pruners import PruneContext
from ..pruners.budget import keep_counts_for_rate
from ..progress import progress_bar
from ..pruners.cost import CostModel
from ..pruners.groups import find_channel_groups
from ..runtime import Runtime
from .evaluate import check_architecture
from .prune import pruner_from_config
from .wiring import make_eval_loaders, make_train_loader, prepare_dataset

DEFAULT_RATES = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_TARGET_MACS = 0.5  # when neither the call nor the config's prune.target_macs gives one
CSV_COLUMNS = ("group", "kind", "stage", "channels", "rate", "kept", "macs_fraction", "mAP", "rank1", "mAP_drop")
FILES = ("sensitivity.csv", "sensitivity.png", "layer_rates.yaml")


def check_rates(rates: Sequence[float]) -> list[float]:
    """Sorted distinct rates, each a fraction pruned in (0, 1); a ValueError naming the bad one otherwise."""
    if not rates:
        raise ValueError("--rates: give at least one rate, e.g. --rates 0.1,0.3,0.5,0.7,0.9")
    for rate in rates:
        if not 0 < rate < 1:
            raise ValueError(f"--rates: each rate is a fraction of channels pruned in (0, 1), got {rate}")
    return sorted(set(float(r) for r in rates))


def subset_split(dataset: ReIDDataset, num_ids: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(query, gallery) restricted to ``num_ids`` query identities drawn with ``seed`` (0: the whole split).

    The subset keeps every query and gallery image of the drawn identities and nothing else
    (no distractors), so each kept query still has all its true matches.
    """
    if num_ids < 0:
        raise ValueError(f"--subset-ids: expected 0 (the whole test split) or a positive count, got {num_ids}")
    pids = sorted({s.pid for s in dataset.query})
    if num_ids > len(pids):
        warnings.warn(f"--subset-ids {num_ids}: the test split has {len(pids)} query identities; using all of them",
                      UserWarning, stacklevel=2)
    if num_ids == 0 or num_ids >= len(pids):
        return list(dataset.query), list(dataset.gallery)
    chosen = set(np.random.default_rng(seed).choice(pids, size=num_ids, replace=False).tolist())
    return [s for s in dataset.query if s.pid in chosen], [s for s in dataset.gallery if s.pid in chosen]


def sensitivity_checkpoint(cfg: Config, checkpoint: str | Path, *, output: str | Path,
                           rates: Sequence[float] = DEFAULT_RATES, target_macs: float | None = None,
                           subset_ids: int = 0,
                           seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run the sensitivity sweep of ``cfg.prune.method`` on ``checkpoint``; write the files of the module docstring.

    Args:
        cfg: the run config; ``prune.method``, ``scope``, ``include_*``, ``min_channels``,
            ``round_to``, ``options`` and ``data_batches`` say how each group is pruned.
        checkpoint: the trained model.
        output: the folder to write (must not hold a ``sensitivity.csv`` yet).
        rates: the fractions pruned in each group, each in (0, 1).
        target_macs: the fraction of the model's MACs that ``layer_rates.yaml`` keeps (default:
            ``prune.target_macs``, else :data:`DEFAULT_TARGET_MACS`).
        subset_ids: evaluate on this many test identities drawn with ``seed`` (0: all).
        seed: the seed of the subset.
        progress: progress bar over the (group, rate) pairs, dataset summary.

    Returns:
        ``{"baseline": {"mAP", "rank1"}, "rows": [...], "scope", "target_macs", "target_defaulted" (no
        target was given: :data:`DEFAULT_TARGET_MACS`), "allocation": {"rates", "macs_fraction",
        "predicted_drop"}, "plot": bool, "files": [...], "groups": int, "queries": int, "gallery": int}``.

    Raises:
        FileExistsError: ``output`` already holds a sensitivity.csv.
        ValueError: bad rates or target, a method that prunes during training, an architecture
            other than the config's, or a target the largest rate cannot reach (the default one named
            as such); all before any pruning, and nothing is written.
    """
    out = Path(output)
    if (out / FILES[0]).exists():
        raise FileExistsError(f"{out / FILES[0]} exists; choose another --output")
    rates = check_rates(rates)
    if target_macs is None:
        target_macs = cfg.prune.target_macs
    defaulted = target_macs is None  # no target given: a failed check must say where the one it checks came from
    if defaulted:
        target_macs = DEFAULT_TARGET_MACS
    ckpt = read_checkpoint(checkpoint)
    check_architecture(cfg, ckpt, checkpoint)
    model = model_from_checkpoint(ckpt)
    model.set_retrieval_feature(cfg.model.retrieval_feature)
    p = cfg.prune
    runtime = Runtime.from_config(cfg.train)
    probe = pruner_from_config(cfg, runtime, layer_rates={})  # checks method and options; scope auto means internal here
    scope = probe.scope
    groups = find_channel_groups(model, scope=scope, include_stem=p.include_stem,
                                 include_downsample=p.include_downsample, include_last_stage=p.include_last_stage)
    if not groups:
        raise ValueError(f"no prunable channel groups in this model at scope {scope!r}")
    if probe.requires == "training":
        raise ValueError(f"pruning method {p.method!r} prunes during training; a sensitivity sweep prunes trained "
                         "models without training: use a one-shot method (haoli, fpgm, molchanov, entropy, thinet, "
                         "channel_pruning)")
    cost = CostModel(model, (cfg.data.height, cfg.data.width))
    full_macs = cost.macs()

    def macs_fraction(keep: Mapping[str, int]) -> float:
        return cost.macs(keep) / full_macs

    def kept(group, rate: float) -> int:
        return keep_counts_for_rate([group], {group.name: rate}, min_channels=p.min_channels,
                                    round_to=p.round_to)[group.name]

    smallest = {g.name: kept(g, rates[-1]) for g in groups}
    if defaulted and macs_fraction(smallest) > target_macs + EPS:
        least = math.ceil(macs_fraction(smallest) * 1000) / 1000  # rounded up: a target that can be met
        raise ValueError(
            f"no MACs target was given (--target-macs, prune.target_macs), so layer_rates.yaml aims at the default "
            f"{DEFAULT_TARGET_MACS:g}, which these rates cannot reach: with every group at its smallest swept width "
            f"the model keeps {macs_fraction(smallest):.4f} of its MACs; give --target-macs {least:g} or more, sweep "
            "higher rates (--rates) or prune more groups (--scope all)")
    check_budget(smallest, macs_fraction, target_macs)

    dataset = prepare_dataset(cfg.data, verbose=progress)
    if dataset.val_query:  # the rates are a decision: they read the validation split when there is one
        dataset = dataclasses.replace(dataset, query=dataset.val_query, gallery=dataset.val_gallery)
    query, gallery = subset_split(dataset, subset_ids, seed)
    # Decoded once and kept in memory: every (group, rate) pair is evaluated on the same tensors.
    loaders = make_eval_loaders(cfg, dataclasses.replace(dataset, query=query, gallery=gallery))
    query_batches, gallery_batches = (list(loader) for loader in loaders)
    context = PruneContext(device=runtime.device, num_batches=p.data_batches)
    if probe.requires == "data":
        context.data = list(itertools.islice(make_train_loader(cfg, dataset, runtime), p.data_batches))
    model = model.to(runtime.device).eval()

    def evaluate(net) -> dict[str, Any]:
        return evaluate_with_config(net, cfg, query_batches, gallery_batches, compute=runtime.compute, progress=False)

    baseline = evaluate(model)
    rows = []
    pairs = [(g, r) for g in groups for r in rates]
    for group, rate in progress_bar(pairs, desc="sensitivity", disable=not progress, dynamic_ncols=True):
        pruned = pruner_from_config(cfg, runtime, layer_rates={group.name: rate}).prune(copy.deepcopy(model), context)
        metrics = evaluate(pruned)
        k = kept(group, rate)
        rows.append({"group": group.name, "kind": group.kind, "stage": group.stage, "channels": group.channels,
                     "rate": rate, "kept": k, "macs_fraction": round(macs_fraction({group.name: k}), 6),
                     "mAP": round(metrics["mAP"], 4), "rank1": round(metrics["rank1"], 4),
                     "mAP_drop": round(baseline["mAP"] - metrics["mAP"], 4)})
    curves = {g.name: [(r["kept"], r["mAP_drop"]) for r in rows if r["group"] == g.name] for g in groups}
    allocation = allocate_rates(curves, {g.name: g.channels for g in groups}, macs_fraction, target_macs,
                                min_channels=p.min_channels, round_to=p.round_to)
    check_round_trip(allocation, groups, p.min_channels, p.round_to)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / FILES[0])
    plotted = plot_sensitivity(rows, baseline["mAP"], out / FILES[1],
                               title=f"{p.method}, each group pruned alone, no fine-tuning")
    write_layer_rates(allocation, out / FILES[2], method=p.method, scope=scope, target_macs=target_macs,
                      baseline_map=baseline["mAP"])
    return {"baseline": {"mAP": baseline["mAP"], "rank1": baseline["rank1"]}, "rows": rows, "scope": scope,
            "target_macs": target_macs, "target_defaulted": defaulted,
            "allocation": {"rates": allocation.rates, "macs_fraction": allocation.macs_fraction,
                           "predicted_drop": allocation.predicted_drop},
            "plot": plotted, "files": [str(out / f) for f in FILES if (out / f).exists()],
            "groups": len(groups), "queries": len(query), "gallery": len(gallery)}


def check_round_trip(allocation: Allocation, groups, min_channels: int, round_to: int) -> None:
    """The written rates must give the chosen widths back through keep_counts_for_rate, as ``prune`` reads them."""
    back = keep_counts_for_rate(groups, allocation.rates, min_channels=min_channels, round_to=round_to)
    if back != allocation.keep:
        raise RuntimeError(f"layer rates do not reproduce the chosen widths: {back} != {allocation.keep}")


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write the sweep rows with the columns :data:`CSV_COLUMNS`."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_layer_rates(allocation: Allocation, path: Path, *, method: str, scope: str, target_macs: float,
                      baseline_map: float) -> None:
    """Write {group: rate} as YAML, with comments saying how it was chosen and how to use it."""
    header = [
        "Per-group prune rates (fraction of channels PRUNED), chosen by reid-prune sensitivity:",
        f"method {method}, scope {scope}; MACs target {target_macs:g} of the model, "
        f"{allocation.macs_fraction:.4f} kept with these rates;",
        f"predicted mAP drop {allocation.predicted_drop:.2f} points (sum of the single-group drops measured "
        f"without fine-tuning; baseline {baseline_map:.2f} mAP on the evaluated split).",
        f"Use: reid-prune prune --config CFG --checkpoint CKPT --method {method} --scope {scope} "
        f"--layer-rates {path.name}",
    ]
    body = yaml.safe_dump(allocation.rates, sort_keys=False)
    path.write_text("".join(f"# {line}\n" for line in header) + body)


def _panels(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """{panel title: group names}: internal groups by stage, then all stream groups together."""
    panels: dict[str, list[str]] = {}
    for row in rows:
        title = row["stage"] if row["kind"] == "internal" else "residual streams"
        if row["group"] not in panels.setdefault(title, []):
            panels[title].append(row["group"])
    streams = panels.pop("residual streams", None)
    return {**panels, **({"residual streams": streams} if streams else {})}


def plot_sensitivity(rows: Sequence[Mapping[str, Any]], baseline_map: float, path: Path, *, title: str = "") -> bool:
    """mAP against the rate pruned, one curve per group (starting at the baseline), one panel per stage.

    Panels are laid out 3 per row; the figure is ``4.5 * columns`` x ``3.6 * rows`` inches
    at :data:`~reid_prune.analysis.plotting.DPI` pixels per inch. Returns False without matplotlib.
    """
    panels = _panels(rows)
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = new_figure(4.5 * columns, 3.6 * lines)
    if figure is None:
        return False
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, (panel, names) in zip(axes, panels.items()):
        for name in names:
            points = sorted((r["rate"], r["mAP"]) for r in rows if r["group"] == name)
            ax.plot([0.0] + [x for x, _ in points], [baseline_map] + [y for _, y in points], marker="o",
                    markersize=3, label=name)
        ax.axhline(baseline_map, color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=panel, xlabel="fraction of channels pruned", ylabel="mAP (%)", xlim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path)
    return True

