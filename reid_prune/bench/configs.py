"""The run config of each bench cell, built from a resolved :class:`~.schema.Bench`.

Every cell's config is the run config defaults, then the bench's ``base``, the dataset's
keys, the baseline's and the method's ``set``, then the cell's own seed, budget and method.
"""

from __future__ import annotations

import copy
import dataclasses

from ..config import Config, ConfigError, DataConfig, PruneConfig, validate
from ..config_fields import merge
from ..data.datasets import ReIDDataset
from ..data.sampler import PKSampler
from ..distributed import env_world_size
from ..pruners import get_method, resolve_scope
from .schema import Bench, base_defaults
from .specs import BaselineSpec, BudgetSpec, MethodSpec


def data_config(bench: Bench, dataset: str) -> DataConfig:
    """The data section of ``dataset``'s cells: base.data, then the dataset's keys, then input_size ([H, W] pixels).

    Raises:
        ConfigError: a key or type the data section refuses (``KeyError`` for a dataset not in the bench).
    """
    data = DataConfig()
    merge(data, bench.base.get("data", {}), "base.data.")
    merge(data, bench.datasets[dataset], f"datasets.{dataset}.")
    if bench.input_size is not None:
        data.height, data.width = bench.input_size
    return data


def run_config(bench: Bench, dataset: str, baseline: BaselineSpec, seed: int, method: MethodSpec | None = None,
               target_macs: float | None = None, *, target_latency: float | None = None,
               extra_epochs: int = 0) -> Config:
    """The resolved, validated run config of one cell.

    A baseline trained on ``dataset`` (``extra_epochs`` stretches its schedule, learning-rate
    steps at the same fractions); with ``target_macs`` (a fraction of the MACs kept) or
    ``target_latency`` (of the latency measured on the machine that prunes it), its pruning
    and fine-tuning, by ``method`` when given. A method's own ``seed`` option follows ``seed``
    unless the bench sets it, so every random choice of a cell changes with the cell's seed.
    ``prune.scope: auto`` is resolved here, so every cell's config and key says the scope it
    ran at.

    Raises:
        ConfigError: a value the run config refuses, the message naming the dataset, architecture,
            seed and method of the cell.
    """
    where = f"bench dataset {dataset}, {baseline.arch}, seed {seed}" + (f", method {method.label}" if method else "")
    try:
        cfg = base_defaults(bench)
        cfg.data = data_config(bench, dataset)
        merge(cfg, {"model": {"arch": baseline.arch}, "train": {"seed": seed}})
        if baseline.epochs is not None:  # None: a checkpoint baseline, not trained here (its cells keep base's)
            merge(cfg, {"train": {"epochs": baseline.epochs}})
        merge(cfg, baseline.overrides)
        trained = cfg.train.epochs
        cfg.train.epochs += extra_epochs
        if bench.lr_steps is not None:
            cfg.train.milestones = [round(f * cfg.train.epochs) for f in bench.lr_steps]
        elif extra_epochs:
            cfg.train.milestones = [round(m * cfg.train.epochs / trained) for m in cfg.train.milestones]
        if target_macs is None and target_latency is None:
            # A training reads no prune key: the base's stay out of its config and key, so that changing
            # them retrains no baseline (and a baseline's key is the same in every bench).
            cfg.prune = PruneConfig()
        else:
            merge(cfg, {"prune": {"rate": None, "target_params": None, "target_macs": target_macs,
                                  "target_latency": target_latency, "finetune_epochs": bench.finetune_epochs,
                                  "train_steps": bench.train_steps}})
        if method is not None:
            merge(cfg, {"prune": {"method": method.name}})
            merge(cfg, method.overrides)
            seeded = {f.name: f.default for f in dataclasses.fields(get_method(method.name).options)}
            # Left out at the default, so that cells computed before this rule keep their keys.
            if "seed" in seeded and "seed" not in method.options and seed != seeded["seed"]:
                merge(cfg, {"prune": {"options": {"seed": seed}}})
        cfg.eval.latency = False  # the bench measures CPU latency itself, once per model
        validate(cfg)
        p = cfg.prune
        budget = any(v is not None for v in (p.target_macs, p.target_params, p.target_latency))
        p.scope = resolve_scope(p.scope, budget=budget, scopes=get_method(p.method).scopes)
        return cfg
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def steps_per_epoch(cfg: Config, dataset: ReIDDataset) -> int:
    """Optimiser steps in one epoch of ``cfg``'s P x K batches on ``dataset``'s training split (per rank), at most
    ``train.max_batches``, as the trainer counts them."""
    batches = len(PKSampler([s.pid for s in dataset.train], cfg.data.p, cfg.data.k, num_replicas=env_world_size()))
    return min(batches, cfg.train.max_batches) if cfg.train.max_batches > 0 else batches


def stretched(cfg: Config, steps: int, dataset: ReIDDataset, where: str) -> Config:
    """A copy of ``cfg`` whose schedule is ``steps`` optimiser steps longer, in whole epochs, the learning-rate
    steps at the same fractions: how the scratch control gets the bench's ``train_steps`` on top of the
    source's epochs.

    Raises:
        ConfigError: ``steps`` is not a whole number of epochs of this dataset (naming the nearest that are).
    """
    per_epoch = steps_per_epoch(cfg, dataset)
    if steps % per_epoch:
        near = sorted({max(1, steps // per_epoch) * per_epoch, (steps // per_epoch + 1) * per_epoch})
        raise ConfigError(f"bench key train_steps: {where} trains whole epochs of {per_epoch} steps "
                          f"(P={cfg.data.p} of {dataset.num_train_pids} training identities); {steps} is not a "
                          f"multiple of {per_epoch}: use {' or '.join(map(str, near))}")
    cfg = copy.deepcopy(cfg)
    before, cfg.train.epochs = cfg.train.epochs, cfg.train.epochs + steps // per_epoch
    cfg.train.milestones = [round(m * cfg.train.epochs / before) for m in cfg.train.milestones]
    return validate(cfg)


def latency_batch_sizes(bench: Bench) -> list[int]:
    """The batch sizes the bench times every model at: base.eval.latency_batch_sizes; empty when
    base.eval.latency is false (no latency measured)."""
    e = base_defaults(bench).eval
    return list(e.latency_batch_sizes) if e.latency else []


def finetune_seeds_of(bench: Bench, budget: BudgetSpec) -> list[int | None]:
    """Fine-tuning seeds of the pruned cells at ``budget``; [None]: each uses its baseline's seed."""
    seeds = budget.finetune_seeds if budget.finetune_seeds is not None else bench.finetune_seeds
    return list(seeds) if seeds is not None else [None]
