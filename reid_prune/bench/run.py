"""Running a whole bench: check everything first, then every unfinished cell, its scores, latency and the results."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import yaml

from ..distributed import broadcast_object, is_main_process
from ..outputs import check_output_dir
from .cells import run_cell
from .configs import data_config, latency_batch_sizes
from .latency import cell_latencies, compute_text, latency_compute, threads_text
from .plan import check_plan, plan_bench
from .plots import PLOT_NOTE
from .schema import Bench
from .scoring import score
from .trust import Fingerprints
from .tables import write_results


def run_bench(bench: Bench, output: str | Path | None = None, *, progress: bool = True,
              log: Callable[[str], None] = print, command: str = "") -> dict[str, Any]:
    """Run every unfinished cell of ``bench``, then write the results under ``output``.

    Under ``torchrun`` every rank trains and prunes each cell (DDP); rank 0 alone logs,
    evaluates on other datasets, measures latency and writes files, and every rank
    returns its summary.

    Returns the content of ``results.json``: {"rows": [...], "groups": [...], "budgets": {...}, ...}.
    """
    out = check_output_dir(output or bench.output, "--output")
    main = is_main_process()
    log = log if main else _silent
    plan = plan_bench(bench)
    check_plan(plan, verbose=progress)
    for note in plan.notes:
        log(note)
    cells_dir = out / "cells"
    if main:
        cells_dir.mkdir(parents=True, exist_ok=True)
        # The resolved file (base_config read in): it reads back as the same bench.
        (out / "bench.yaml").write_text(yaml.safe_dump(dataclasses.asdict(bench), sort_keys=False))
    results: dict[str, dict[str, Any]] = {}
    scores: dict[tuple[str, str], dict[str, Any]] = {}
    fingerprints = Fingerprints()  # each dataset's files listed once per run
    for i, cell in enumerate(plan.cells, 1):
        log(f"[{i}/{len(plan.cells)}] {cell.describe()}")
        results[cell.key], cached = run_cell(cell, cells_dir, progress=progress, log=log, fingerprints=fingerprints)
        if cached:
            log("    finished earlier (cached)")
        else:
            metrics = results[cell.key]["metrics"]
            log(f"    done in {results[cell.key]['wall_seconds'] / 60:.1f} min: mAP {metrics['mAP']:.1f}, "
                f"rank-1 {metrics['rank1']:.1f}")
        for row in plan.rows:
            if row.cell is cell and (cell.key, row.dataset) not in scores:
                scores[cell.key, row.dataset] = scored = score(cell, row.dataset, data_config(bench, row.dataset),
                                                               results[cell.key], cells_dir, progress=progress,
                                                               fingerprints=fingerprints)
                if scored.get("why"):
                    log(f"    re-scored {scored['why']} ({scored['scored_by']})")
        if main:
            write_results(bench, plan, out, cells_dir, results, scores, {}, command=command, final=False)
    summary = None
    if main:
        latencies: dict[str, dict[str, float]] = {}
        batches = latency_batch_sizes(bench)
        if batches:
            log(f"measuring the CPU latency of {len(plan.cells)} models, each right after its source model "
                f"(batch {', '.join(map(str, batches))}, {threads_text(bench)}, {compute_text(plan)})")
            latencies = cell_latencies(plan.cells, cells_dir, batches, bench.latency_threads,
                                       prune_arch=bench.prune_arch, compute=latency_compute(plan))
        summary = write_results(bench, plan, out, cells_dir, results, scores, latencies, command=command)
        drawn = [f"{name}.png" for name, ok in summary["plots"].items() if ok]
        log(f"wrote {out / 'results.md'}, results.csv, results.json" + "".join(f", {name}" for name in drawn)
            + (f"; {PLOT_NOTE}" if False in summary["plots"].values() else ""))
    return broadcast_object(summary)  # the other ranks wait here while rank 0 times the models


def _silent(message: str) -> None:
    """The log of ranks other than 0."""
