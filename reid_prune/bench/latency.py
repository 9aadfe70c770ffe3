"""CPU latency of every finished model, and its ratio to its source model timed in the same rounds.

Each model whose numbers are not cached is timed in rounds. In every round each model is
timed right after its source (the unpruned ``prune_arch`` baseline it came from), so a
change of machine load hits both alike: the round's ratio is the model's time over the
source's. The latency is the median over the rounds of the model's own timings, the ratio
the median over the rounds of the per-round ratios, with their minimum and maximum.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

from ..checkpoint import load_model
from ..evaluation import measure_latency
from ..precision import ComputeSettings
from .cells import cell_checkpoint, read_json, write_json
from .plan import Cell, Plan
from .schema import Bench
from .trust import file_sha256

LATENCY_ROUNDS = 5
MIN_ROUNDS = 3  # the fewest rounds a ratio's median and min-max are reported over
WARMUP, REPEATS = 1, 3  # per timing: untimed passes, then timed passes (their median) per batch size


def latency_compute(plan: Plan) -> ComputeSettings:
    """The precision and memory format the bench times its models in: the base config's, on the CPU."""
    return ComputeSettings.from_config(plan.cells[0].cfg.train, "cpu")


def compute_text(plan: Plan) -> str:
    """``bf16, channels_last``: how the models are timed."""
    compute = latency_compute(plan)
    return f"{compute.precision}, {compute.memory_format_name}"


def threads_text(bench: Bench) -> str:
    n = bench.latency_threads or torch.get_num_threads()
    return f"{n} thread{'s' if n > 1 else ''}"


def ratio_batch(batch_sizes: Sequence[int]) -> int | None:
    """The batch size of the headline latency ratio: 32 when timed, else the largest one timed."""
    return 32 if 32 in batch_sizes else max(batch_sizes, default=None)


def source_cell(cell: Cell, cells: Sequence[Cell], prune_arch: str) -> Cell | None:
    """The unpruned ``prune_arch`` baseline a cell came from (follow ``parent`` to the trained model: its
    dataset and seed), as the MACs kept are counted (``tables._reference``); a baseline of another
    architecture is compared with the ``prune_arch`` baseline of its dataset and seed."""
    root = cell
    while root.parent is not None:
        root = root.parent
    return next((c for c in cells if c.kind == "train" and c.arch == prune_arch and c.dataset == root.dataset
                 and c.seed == root.seed), None)


def ratio_summary(ratios: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of the per-round ratios (model / source), with the rounds themselves."""
    return {"median": round(statistics.median(ratios), 4), "min": round(min(ratios), 4),
            "max": round(max(ratios), 4), "rounds": [round(r, 4) for r in ratios]}


def latency_columns(latency_ms: dict[str, float], ratio: dict[str, dict[str, Any]] | None,
                    reference: bool) -> dict[str, float]:
    """A cell's result columns: ``latency_ms_batchB`` and ``latency_ratio_batchB`` (median), ``..._min``, ``..._max``.

    The source model itself has the ratio 1 (no timing needed); a cell without a source has no ratio.
    """
    columns = {f"latency_ms_{batch}": ms for batch, ms in latency_ms.items()}
    for batch in latency_ms:
        if reference or ratio is not None:
            r = {"median": 1.0, "min": 1.0, "max": 1.0} if reference else ratio[batch]
            columns.update({f"latency_ratio_{batch}": r["median"], f"latency_ratio_{batch}_min": r["min"],
                            f"latency_ratio_{batch}_max": r["max"]})
    return columns


def cell_latencies(cells: Sequence[Cell], cells_dir: Path, batch_sizes: Sequence[int], threads: int, *,
                   prune_arch: str, compute: ComputeSettings | None = None,
                   rounds: int = LATENCY_ROUNDS) -> dict[str, dict[str, float]]:
    """Each cell's latency columns (:func:`latency_columns`): {cell key: {"latency_ms_batchB": ms, ...}}.

    The cells not measured before are timed in ``rounds`` rounds (at least 3). In each round
    every such cell is timed right after its source (:func:`source_cell`; :data:`REPEATS`
    timed passes per batch size, their median), and the round's ratio is the cell's time over
    the source's; a source is timed before each of its cells, and a cell without a source
    alone. Milliseconds per image: the median of a cell's own timings over the rounds; ratio:
    the median of the per-round ratios, with min and max. Timed with ``threads`` CPU threads
    (0: torch's default) at ``compute``'s precision and memory format (default fp32, NCHW),
    then cached beside each cell (``latency.json``) with its setting: batch sizes, threads,
    precision, memory format, rounds, passes and the source's key, and the SHA-256 of the model
    file timed; a cache of another setting or model is timed anew. A source whose own numbers are cached is timed again for its cells'
    ratios, but keeps its cached numbers.
    """
    if rounds < MIN_ROUNDS:
        raise ValueError(f"cell_latencies: need at least {MIN_ROUNDS} rounds for a ratio's median and range, "
                         f"got {rounds}")
    compute = compute or ComputeSettings(torch.device("cpu"))
    batches = [f"batch{b}" for b in batch_sizes]
    base = {"batches": batches, "threads": threads, "precision": compute.precision,
            "memory_format": compute.memory_format_name, "rounds": rounds, "warmup": WARMUP, "repeats": REPEATS}
    sources = {cell.key: source_cell(cell, cells, prune_arch) for cell in cells}
    wanted = {cell.key: {**base, "source": None if sources[cell.key] in (None, cell) else sources[cell.key].key}
              for cell in cells}
    columns, todo = {}, []
    paths = {cell.key: cell_checkpoint(cell, cells_dir / cell.key) for cell in cells}
    models = {key: file_sha256(path) if path.is_file() else None for key, path in paths.items()}
    for cell in cells:
        path = cells_dir / cell.key / "latency.json"
        cached = read_json(path)
        # Its numbers are this model's: the SHA-256 of the model file they timed (a cache from before this check is
        # adopted once).
        if isinstance(cached, dict) and cached.get("setting") == wanted[cell.key] \
                and cached.get("model", models[cell.key]) == models[cell.key]:
            if "model" not in cached:
                write_json(path, {**cached, "model": models[cell.key]})
            columns[cell.key] = latency_columns(cached["latency_ms"], cached.get("ratio"), sources[cell.key] is cell)
        else:
            todo.append(cell)
    # What each round times: a cell, right after its source when it has another one.
    pairs = [(None if wanted[c.key]["source"] is None else sources[c.key], c) for c in todo]
    sourced = {source.key for source, _ in pairs if source is not None}
    pairs = [(s, c) for s, c in pairs if s is not None or c.key not in sourced]  # a source is timed in its pairs
    loaded = {cell.key: (load_model(cell_checkpoint(cell, cells_dir / cell.key)), (cell.cfg.data.height,
                                                                                   cell.cfg.data.width))
              for pair in pairs for cell in pair if cell is not None}
    samples: dict[str, dict[str, list[float]]] = {key: {b: [] for b in batches} for key in loaded}
    ratios: dict[str, dict[str, list[float]]] = {c.key: {b: [] for b in batches} for s, c in pairs if s is not None}

    def timed(key: str) -> dict[str, float]:
        model, size = loaded[key]
        times = measure_latency(model, size, batch_sizes=tuple(batch_sizes), device="cpu", warmup=WARMUP,
                                repeats=REPEATS, precision=compute.precision, channels_last=compute.channels_last)
        for batch in batches:
            samples[key][batch].append(times[batch])
        return times

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        for _ in range(rounds):
            for source, cell in pairs:
                before = timed(source.key) if source is not None else None
                after = timed(cell.key)
                for batch in batches if before is not None else ():
                    ratios[cell.key][batch].append(after[batch] / before[batch])
    finally:
        torch.set_num_threads(default_threads)
    for cell in todo:
        latency_ms = {batch: round(statistics.median(times), 3) for batch, times in samples[cell.key].items()}
        ratio = {batch: ratio_summary(r) for batch, r in ratios[cell.key].items()} if cell.key in ratios else None
        write_json(cells_dir / cell.key / "latency.json",
                   {"latency_ms": latency_ms, "ratio": ratio, "setting": wanted[cell.key], "model": models[cell.key]})
        columns[cell.key] = latency_columns(latency_ms, ratio, sources[cell.key] is cell)
    return columns
