"""Where a job runs, resolved once at its door and handed down: device, precision, ranks, cache folder.

A job (train, evaluate, prune, ...) builds one :class:`Runtime` from its config's ``train``
section and passes it to everything below it, so the device and the precision are decided
in one place and every layer runs with the same answer::

    runtime = Runtime.from_config(cfg.train)
    trainer = Trainer(cfg, model, ..., runtime=runtime)

This module also owns the process-wide helpers that several layers share:
:func:`resolve_device`, :func:`seed_everything`, :func:`cache_dir` and :func:`check_cache_dir`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distributed import distributed_context, env_world_size, local_rank
from .outputs import OutputPathError, check_output_dir
from .precision import ComputeSettings

CACHE_VAR = "REID_PRUNE_CACHE"


def resolve_device(spec: str, *, option: str = "config key train.device") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; other values go to ``torch.device``.

    Under torchrun (``WORLD_SIZE`` > 1) ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK``: one GPU per process.
    ``option`` is how the user gave ``spec`` (a config key or a flag such as ``--device``), for errors.

    Raises:
        ValueError: ``spec`` is not a device, or names CUDA on a machine without it.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"{option}: expected auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{option}: 'mps' was asked for but this machine has no Apple MPS device; use auto or cpu")
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"{option}: {spec!r} was asked for but CUDA is not available; use auto or cpu")
    if device.index is None and env_world_size() > 1:
        if local_rank() >= torch.cuda.device_count():
            raise ValueError(
                f"torchrun started process LOCAL_RANK={local_rank()} but this machine shows "
                f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node (--nproc_per_node)"
            )
        device = torch.device("cuda", local_rank())
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (NumPy takes the seed modulo 2**32)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where generated data and latency tables are kept: ``$REID_PRUNE_CACHE`` or ``~/.cache/reid_prune``.

    An empty ``$REID_PRUNE_CACHE`` counts as unset (not as the working directory).
    """
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache" / "reid_prune")


def check_cache_dir(*parts: str) -> Path:
    """The cache subfolder ``cache_dir() / parts``, checked to be a folder that can be written (or created).

    Called before the work whose results go there (a latency table takes minutes to time),
    so a bad ``$REID_PRUNE_CACHE`` stops a command at once, not when the first result is saved.
    Nothing is created.

    Raises:
        OutputPathError (a ValueError): the folder, or a folder above it, is a file, or cannot be
            written; the message names ``$REID_PRUNE_CACHE`` and how to fix it, without errno text.
    """
    folder = cache_dir().joinpath(*parts)
    try:
        check_output_dir(folder, CACHE_VAR)
    except OutputPathError:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)  # what stands in the way
        why = f"'{blocker}' is a file, not a folder" if not blocker.is_dir() else f"'{blocker}' is not writable"
        where = (f"{CACHE_VAR}={os.environ[CACHE_VAR]!r}" if os.environ.get(CACHE_VAR)
                 else f"the cache folder '{cache_dir()}' ({CACHE_VAR} is not set)")
        raise OutputPathError(f"{where}: cannot keep the cache in '{folder}', since {why}; set {CACHE_VAR} to a "
                              "folder you can write") from None
    return folder


@dataclass(frozen=True)
class Runtime:
    """A job's resolved runtime.

    Attributes:
        compute: device, precision and memory format of every forward pass (:class:`ComputeSettings`).
        rank, world_size: this process's rank and the number of processes (1 without torchrun).
        cache: the cache folder (:func:`cache_dir`) when the runtime was resolved.
    """

    compute: ComputeSettings
    rank: int = 0
    world_size: int = 1
    cache: Path = field(default_factory=cache_dir)

    @classmethod
    def from_config(cls, train: Any) -> Runtime:
        """From a :class:`~reid_prune.config.TrainConfig` (``device``, ``amp``, ``channels_last``).

        Raises:
            ValueError: the device does not exist here, or the precision needs hardware it lacks.
        """
        compute = ComputeSettings.from_config(train, resolve_device(train.device))
        rank, world_size = distributed_context()
        return cls(compute, rank, world_size, cache_dir())

    @property
    def device(self) -> torch.device:
        return self.compute.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0
