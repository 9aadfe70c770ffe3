"""CPU latency of every finished model, timed in turns so that a change of machine load hits all alike."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import torch

from ..checkpoint import load_model
from ..evaluation import measure_latency
from ..precision import ComputeSettings
from .cells import cell_checkpoint, read_json, write_json
from .plan import Cell, Plan
from .schema import Bench

LATENCY_ROUNDS = 5


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


def cell_latencies(cells: Sequence[Cell], cells_dir: Path, batch_sizes: Sequence[int], threads: int, *,
                   compute: ComputeSettings | None = None, rounds: int = LATENCY_ROUNDS) -> dict[str, dict[str, float]]:
    """CPU milliseconds per image of each cell's model at each batch size: {cell key: {"batchB": ms}}.

    The models not measured before are timed in turns, ``rounds`` times each (3 timed passes
    per turn, median of the turns), so that a change of machine load hits them all alike,
    with ``threads`` CPU threads (0: torch's default), at ``compute``'s precision and memory
    format (default fp32, NCHW); the numbers are then cached beside each cell (``latency.json``).
    """
    compute = compute or ComputeSettings(torch.device("cpu"))
    wanted = {"batches": [f"batch{b}" for b in batch_sizes], "threads": threads, "precision": compute.precision,
              "memory_format": compute.memory_format_name}
    latencies, models = {}, {}
    for cell in cells:
        cached = read_json(cells_dir / cell.key / "latency.json")
        if cached is not None and cached["setting"] == wanted:
            latencies[cell.key] = cached["latency_ms"]
        else:
            models[cell.key] = (load_model(cell_checkpoint(cell, cells_dir / cell.key)),
                                (cell.cfg.data.height, cell.cfg.data.width))
    samples: dict[str, dict[str, list[float]]] = {key: {b: [] for b in wanted["batches"]} for key in models}
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        for _ in range(rounds):
            for key, (model, size) in models.items():
                for batch, ms in measure_latency(model, size, batch_sizes=tuple(batch_sizes), device="cpu", warmup=1,
                                                 repeats=3, precision=compute.precision,
                                                 channels_last=compute.channels_last).items():
                    samples[key][batch].append(ms)
    finally:
        torch.set_num_threads(default_threads)
    for key, per_batch in samples.items():
        latencies[key] = {batch: round(statistics.median(times), 3) for batch, times in per_batch.items()}
        write_json(cells_dir / key / "latency.json", {"latency_ms": latencies[key], "setting": wanted})
    return latencies
