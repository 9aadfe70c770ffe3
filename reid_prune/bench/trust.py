"""What a finished cell's files must prove before the bench reuses them, and the stamp that proves it.

A finished cell's ``result.json`` holds, under ``trust``:

- ``data``: fingerprints of the data it was trained and scored on (:func:`data_fingerprint`:
  the split files' names, identities, cameras and sizes; no image is opened). A changed
  training split runs the cell again; a changed test split re-scores it (scoring.py).
- ``files``: the SHA-256 of the files it leaves for others (:func:`cell_files`: the model, and
  a pruned cell's ``report.json``, whose widths other cells read).
- ``inputs``: the SHA-256 of the files of other cells it started from (:func:`input_files`:
  its source model, the report whose widths it kept). A source computed again since makes it stale.

With its ``key`` (written since the first benches), this ties the folder's files to the cell.
A result written before these checks has no ``trust``: it is adopted once (stamped with
what is on disk now) when the files it needs exist and it names its own key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..data.datasets import Sample
from ..jobs.wiring import parse_dataset
from .cellspec import Cell

STAMP = "trust"
DONE = "result.json"  # a finished cell's result, in its folder
_CHUNK = 1 << 20
_hashed: dict[tuple[str, int, int], str] = {}  # (path, size, mtime in ns) -> SHA-256: each file read once


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file at ``path``; remembered while its size and modification time stay the same.

    Raises:
        OSError: the file cannot be read.
    """
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _hashed:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        _hashed[memo] = digest.hexdigest()
    return _hashed[memo]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def data_fingerprint(data: DataConfig) -> dict[str, str]:
    """{"train": ..., "test": ...}: digests of the training split and of the query and gallery splits.

    Each digest covers every image's path (relative to the folder all splits share), identity,
    camera and size in bytes: the files are listed and their sizes read, none is opened, so it
    takes a fraction of a second for Market-1501. A dataset regenerated or edited at the same
    root changes it; a copy of the same files does not (modification times are left out). An image
    rewritten to exactly the same size is not seen. The validation split is carved from the
    training split by ``data.val_ids`` and ``data.val_seed`` (in the cell key), so it is covered.

    Raises:
        OSError, ValueError: the dataset cannot be listed (as when the bench first read it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its warnings (file names it cannot parse) were shown when the bench read it
        dataset = parse_dataset(data)
    splits = {"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery}
    paths = [s.path for split in splits.values() for s in split]
    root = os.path.commonpath(paths) if paths else ""

    def rows(samples: list[Sample]) -> list[tuple[str, int, int, int]]:
        return sorted((os.path.relpath(s.path, root), s.pid, s.camid, os.stat(s.path).st_size) for s in samples)

    return {"train": _digest(rows(splits["train"])),
            "test": _digest({"query": rows(splits["query"]), "gallery": rows(splits["gallery"])})}


class Fingerprints:
    """:func:`data_fingerprint` of each dataset, computed once per bench run (a new object for each run)."""

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, str]] = {}

    def __call__(self, data: DataConfig) -> dict[str, str]:
        key = json.dumps(dataclasses.asdict(data), sort_keys=True)
        if key not in self._seen:
            self._seen[key] = data_fingerprint(data)
        return self._seen[key]

    def of_cell(self, cell: Cell) -> dict[str, str]:
        """The fingerprints a cell records: its data's train and test splits, and its pruning data's training split."""
        own = dict(self(cell.cfg.data))
        if cell.prune_data is not None:
            own["prune_train"] = self(cell.prune_data)["train"]
        return own


def cell_files(cell: Cell) -> tuple[str, ...]:
    """The files (relative to the cell's folder) a finished cell leaves for others; the model comes first."""
    return ("run/last.pt",) if cell.kind in ("train", "scratch") else ("pruned.pt", "report.json")


def input_files(cell: Cell) -> tuple[str, ...]:
    """The files of other cells (relative to the cells folder) the cell's computation read."""
    names = [f"{cell.parent.key}/{cell_files(cell.parent)[0]}"] if cell.parent is not None else []
    if cell.same_widths is not None:
        names.append(f"{cell.same_widths.key}/report.json")
    return tuple(names)


def stamp(cell: Cell, cells_dir: Path, data: dict[str, str]) -> dict[str, Any]:
    """The ``trust`` entry of a finished cell's result: ``data`` (its fingerprints, taken before it ran) and checksums."""
    folder = cells_dir / cell.key
    return {"data": data, "files": {name: file_sha256(folder / name) for name in cell_files(cell)},
            "inputs": {name: file_sha256(cells_dir / name) for name in input_files(cell)}}


def load_result(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the result in ``path``, "") or (None, why it cannot be used: "" when there is none)."""
    if not path.is_file():
        return None, f"{path} is not a file" if path.exists() else ""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable ({exc}; a truncated write?)"
    if not isinstance(result, dict) or not isinstance(result.get("metrics"), dict):
        return None, f"{path} holds no cell result"
    return result, ""


def _changed(recorded: dict[str, Any], now: dict[str, str], cell: Cell) -> str:
    """Why the training data changed since the cell ran ("" when it did not); the test split is scoring's."""
    if cell.source is not None:  # a baseline adopted from a checkpoint read no training image
        return ""
    for role, dataset in (("train", cell.dataset), ("prune_train", cell.prune_on)):
        if recorded.get(role) != now.get(role):
            return (f"the training images of {dataset} changed since it ran (file names, identities or sizes "
                    "differ from the fingerprint in its result.json)")
    return ""


def problem(cell: Cell, cells_dir: Path, result: dict[str, Any], data: dict[str, str]) -> str:
    """Why a finished cell's files cannot be reused, in words ("" when they can).

    ``data``: the fingerprints of its data now (:meth:`Fingerprints.of_cell`). A result without
    ``trust`` (written before these checks) passes when it names the cell and its files exist;
    :func:`adopt` stamps it then.
    """
    folder = cells_dir / cell.key
    if result.get("key") != cell.key:
        return f"its result.json is another cell's (key {result.get('key')})"
    for name in cell_files(cell):
        if not (folder / name).is_file():
            return f"{name} is missing"
    trust = result.get(STAMP)
    if trust is None:
        return _not_adoptable(cell, cells_dir)
    try:
        if set(trust["files"]) != set(cell_files(cell)) or set(trust["inputs"]) != set(input_files(cell)):
            return "its result.json lists other files than the cell has"
        for name, digest in trust["files"].items():
            if file_sha256(folder / name) != digest:
                return f"{name} does not match the SHA-256 in its result.json (changed or replaced since)"
        changed = _changed(trust["data"], data, cell)  # the first cause: its source would be stale for it too
        if changed:
            return changed
        for name, digest in trust["inputs"].items():
            if not (cells_dir / name).is_file() or file_sha256(cells_dir / name) != digest:
                return f"the file it started from, {name}, changed since it ran (that cell was computed again)"
        return ""
    except (KeyError, TypeError, AttributeError):
        return f"the {STAMP!r} entry of its result.json is damaged"


def _not_adoptable(cell: Cell, cells_dir: Path) -> str:
    """Why a result written before these checks cannot be adopted: a source computed again after it finished."""
    finished = (cells_dir / cell.key / "result.json").stat().st_mtime_ns
    for name in input_files(cell):
        path = cells_dir / name
        if not path.is_file():
            return f"the file it started from, {name}, is missing"
        if path.stat().st_mtime_ns > finished:
            return f"the file it started from, {name}, was written after the cell finished"
    return ""


def adopt(cell: Cell, cells_dir: Path, result: dict[str, Any], data: dict[str, str]) -> dict[str, Any]:
    """``result`` (written before these checks) stamped with the data and files on disk now, marked ``adopted``.

    Its test split is recorded as unknown (None), since nothing says which images its numbers were
    scored on (a dataset regenerated at the same root before the adoption looks the same as the
    original): scoring then re-scores it once on the test images there now (scoring.py) and caches that.
    File dates cannot tell either: a copied dataset has new dates and the same images.
    """
    stamped = stamp(cell, cells_dir, data)
    return {**result, STAMP: {**stamped, "data": {**stamped["data"], "test": None}, "adopted": True}}


def dry_run_state(cell: Cell, cells_dir: Path, fingerprints: Fingerprints) -> str:
    """What a run would do with the cell, for ``bench --dry-run``: the same checks as a run, nothing changed.

    ``finished`` only when its files prove it (:func:`problem`, or adoptable); ``to rerun (why)``
    when a run would clear it; ``started`` or ``to run`` otherwise.
    """
    folder = cells_dir / cell.key
    result, why = load_result(folder / DONE)
    if result is None:
        return f"to rerun ({why})" if why else "started" if folder.exists() else "to run"
    try:
        data = fingerprints.of_cell(cell)
    except (OSError, ValueError) as exc:
        return f"finished, unchecked (its data cannot be listed now: {exc})"
    why = problem(cell, cells_dir, result, data)
    return f"to rerun ({why})" if why else "finished"
