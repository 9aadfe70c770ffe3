"""Baselines adopted from a checkpoint (``baselines: [{checkpoint: PATH}]``) instead of trained by the bench.

The file is any reid-prune checkpoint of an unpruned network: the ``best.pt`` of ``reid-prune
train``, or another tool's model converted by ``reid-prune import`` (docs/interop.md). It is read
and checked when the bench file is read and when the bench is planned (so ``--dry-run`` checks
it too), before anything is written: the file exists and is a reid-prune checkpoint of a whole
ResNet, its architecture is the baseline's (and ``prune_arch`` names it), its model keys and the
input size it was trained at (when the file records it) are the cells'. Its cell is a ``train``
cell that does not train: it copies the file to ``run/last.pt``, the file a trained baseline leaves,
and scores it on the test split; pruned, anchor and dense cells start from that copy. The file's
path and SHA-256 are in the cell's key, so another file at the same path is another source.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..backbone import build_model
from ..checkpoint import check_not_folder, module_widths, read_checkpoint
from ..config import Config, ConfigError
from ..jobs.evaluate import ARCHITECTURE_KEYS
from ..outputs import atomic_path
from .cellspec import Cell, Source
from .specs import BaselineSpec
from .trust import file_sha256

_read: dict[tuple[str, int, int], Source] = {}  # (path, size, mtime in ns) -> what it holds: each file read once
CONVERT = ("give the best.pt of a reid-prune training, or convert another tool's model with reid-prune import "
           "--from torchreid|fastreid|bot (docs/interop.md)")


def display(arch: str) -> str:
    """``resnet50`` -> ``ResNet50``: a trained baseline's row label."""
    return arch.replace("resnet", "ResNet")


def checkpoint_path(value: str, folder: Path) -> Path:
    """The absolute path of a baseline's ``checkpoint``: a relative one is read from ``folder`` (the bench file's),
    as ``base_config`` is. Symbolic links are kept as given."""
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else folder / path))


def read_source(path: Path) -> Source:
    """What the checkpoint at ``path`` holds, checked; remembered while its size and modification time stay.

    Raises:
        ValueError: one line: a folder, no such file, not a reid-prune checkpoint, or a pruned network (a bench prunes
            whole networks: its budgets are fractions of a whole ``prune_arch``).
    """
    check_not_folder(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist (a relative path is read from the bench file's folder); {CONVERT}")
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _read:
        try:
            ckpt = read_checkpoint(path)
        except ValueError as exc:
            why = "unreadable" if exc.__cause__ is not None else "no reid-prune format entry"
            raise ValueError(f"{path} is not a reid-prune checkpoint ({why}); {CONVERT}") from None
        config = dict(ckpt["model_config"])
        whole = module_widths(build_model(**config))
        if ckpt.get("prune") is not None or ckpt["widths"] != whole:
            raise ValueError(f"{path} holds a pruned {config['arch']} (fewer channels than a whole one); a bench "
                             "prunes a whole source model: give the checkpoint it was pruned from")
        data = (ckpt.get("config") or {}).get("data") or {}
        size = (data["height"], data["width"]) if "height" in data and "width" in data else None
        _read[memo] = Source(path, file_sha256(path), config, size)
    return _read[memo]


def resolve_baseline(baseline: BaselineSpec, index: int, folder: Path) -> None:
    """Resolve a checkpoint baseline in place: its absolute path, its ``arch`` (from the file), its label.

    ``baseline.arch`` is "" when the bench file did not give it; given, it must be the file's.

    Raises:
        ConfigError: naming ``baselines[INDEX]``: the file cannot serve (:func:`read_source`), the given
            ``arch`` is not the file's, or ``epochs`` is given (the model is not trained here).
    """
    key = f"bench key baselines[{index}]"
    path = checkpoint_path(baseline.checkpoint, folder)
    try:
        source = read_source(path)
    except ValueError as exc:
        raise ConfigError(f"{key}.checkpoint: {exc}") from None
    arch = source.model_config["arch"]
    if baseline.arch and baseline.arch != arch:
        raise ConfigError(f"{key}.arch: {baseline.arch}, but the checkpoint {path} holds a {arch}: leave arch out "
                          f"(it is read from the file) or give a {baseline.arch} checkpoint")
    if baseline.epochs is not None:
        raise ConfigError(f"{key}.epochs: the checkpoint {path} is adopted, not trained here: remove epochs")
    baseline.checkpoint, baseline.arch = str(path), arch
    baseline.label = baseline.label or f"{display(arch)} ({path.name})"


def source_key(source: Source, cfg: Config, hashed_config: dict[str, Any]) -> dict[str, Any]:
    """What the key of a checkpoint baseline's cell hashes: the file (path, SHA-256) and what its score depends on:
    the data section, the model keys and the precision (``hashed_config``: :func:`~.keys.hashed` of ``cfg``).
    The training keys, seed and epochs are left out: one file is one source model, whatever the seed."""
    return {"kind": "checkpoint", "checkpoint": {"path": str(source.path), "sha256": source.sha256},
            "data": hashed_config["data"], "model": hashed_config["model"], "amp": cfg.train.amp}


def check_fits(cfg: Config, source: Source, baseline: BaselineSpec, index: int) -> None:
    """Refuse a checkpoint whose model keys (:data:`~reid_prune.jobs.evaluate.ARCHITECTURE_KEYS`) or training input
    size differ from the cell's config ``cfg``, naming the bench keys that match the file.

    Raises:
        ConfigError: ``bench key baselines[INDEX].checkpoint: ...``, with the ``--set`` of each key to change.
    """
    stored = source.model_config
    where = f"bench key baselines[{index}].checkpoint: {source.path}"
    differ = [k for k in ARCHITECTURE_KEYS if k != "arch" and k in stored and stored[k] != getattr(cfg.model, k)]
    if differ:
        own = baseline.overrides.get("model", {})
        fix = " ".join(f"--set {f'baselines[{index}].set.' if key in own else 'base.'}model.{key}={stored[key]}"
                       for key in differ)
        raise ConfigError(f"{where} holds a {stored['arch']} with " + " and ".join(f"{k} {stored[k]}" for k in differ)
                          + ", but the bench's " + " and ".join(f"model.{k} is {getattr(cfg.model, k)}" for k in differ)
                          + f": put the file's values in the bench file ({fix})")
    size = (cfg.data.height, cfg.data.width)
    if source.size is not None and source.size != size:
        h, w = source.size
        raise ConfigError(f"{where} was trained at {h}x{w} pixels, but the bench's cells run at {size[0]}x{size[1]}: "
                          f"set input_size: [{h}, {w}] (--set 'input_size=[{h}, {w}]')")


def source_of(cell: Cell) -> Source | None:
    """The checkpoint the cell's chain of sources starts from (None: a baseline trained by the bench)."""
    while cell.parent is not None:
        cell = cell.parent
    return cell.source


def networks(cell: Cell, start_classes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(without classifier, as the cell's prune job checks it) build_model arguments of the network a cell pruned from
    a checkpoint starts from: the file's, its stem included. The classifier is the file's, or ``start_classes``
    identities when the cell prunes or fine-tunes on other data than its source's with the identity loss."""
    source = source_of(cell)
    config = {**source.model_config, "retrieval_feature": cell.cfg.model.retrieval_feature, "pretrained": "none"}
    other = (cell.prune_on or cell.dataset) != cell.pretrain and cell.cfg.loss.id_weight > 0
    classes = start_classes if other and start_classes else config.get("num_classes", 0)
    return {**config, "num_classes": 0}, {**config, "num_classes": classes}


def copy_source(source: Source, path: Path) -> Path:
    """Copy the checkpoint to ``path`` atomically, the copy checked against the SHA-256 the bench was planned with.

    Raises:
        ValueError: the file changed since the bench was planned (nothing is left at ``path``).
    """
    with atomic_path(path) as tmp:
        shutil.copyfile(source.path, tmp)
        if file_sha256(Path(tmp)) != source.sha256:
            raise ValueError(f"the checkpoint {source.path} changed since the bench was planned (its SHA-256 "
                             "differs): run the bench again, which plans it as another source model")
    return path
