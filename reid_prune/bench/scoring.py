"""The scores of a finished cell under the bench's evaluation settings, without training anything again.

Evaluation-only settings (``eval.metric``, ``eval.flip``, ``eval.ap``,
``model.retrieval_feature``) do not enter a cell's key (keys.py). A row therefore takes
the numbers its cell's own run measured when they were measured on the row's dataset with
the settings the bench asks for now, and otherwise re-scores the cell's saved model:
``eval-DATASET-HASH.json`` beside the cell caches each re-scoring, the hash covering the
dataset's settings and the evaluation settings. ``scored_by`` in the results says which.

Numbers are reused only for the data they were measured on: a cell's own numbers when the
fingerprint of its test split (trust.py) is still the one its result recorded, and a cached
re-scoring when it records the fingerprint of the test split now and the SHA-256 of the model
file now (a re-scoring cached before these checks is adopted once, stamped with both).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..distributed import broadcast_object, is_main_process
from ..jobs.evaluate import evaluate_checkpoint
from ..jobs.wiring import prepare_dataset
from .cells import METRICS, cell_checkpoint, read_json, write_json
from .keys import eval_settings
from .plan import Cell
from .trust import STAMP, Fingerprints, file_sha256

RUN = "run"  # scored_by of the numbers the cell's own run measured


def _cached(path: Path, proof: dict[str, str]) -> dict[str, Any] | None:
    """The metrics cached in ``path`` when they were measured on the data and model ``proof`` names (rank 0)."""
    cached = read_json(path)
    if not isinstance(cached, dict) or not all(k in cached for k in METRICS):
        return None
    if STAMP not in cached:  # cached before these checks: adopted once, stamped with what is on disk now
        write_json(path, {**cached, STAMP: proof})
    elif cached[STAMP] != proof:
        return None
    return {k: cached[k] for k in METRICS}


def rescore(cell: Cell, dataset: str, data: DataConfig, cells_dir: Path, *, progress: bool = True,
            fingerprints: Fingerprints | None = None) -> tuple[dict[str, Any], str]:
    """(metrics, file name) of a finished cell's model on ``data`` with the cell's evaluation settings, cached.

    Under torchrun every rank calls this: rank 0 evaluates alone and sends the numbers.
    """
    wanted = {"data": dataclasses.asdict(data), "eval": eval_settings(cell.cfg.to_dict())}
    digest = hashlib.sha1(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:10]
    name = f"eval-{dataset}-{digest}.json"
    path = cells_dir / cell.key / name
    checkpoint = cell_checkpoint(cell, cells_dir / cell.key)
    proof = None
    if is_main_process():
        proof = {"test_data": (fingerprints or Fingerprints())(data)["test"], "model": file_sha256(checkpoint)}
    cached = broadcast_object(_cached(path, proof) if is_main_process() else None)
    if cached is not None:
        return cached, name
    cfg = copy.deepcopy(cell.cfg)
    cfg.data = data
    parsed = prepare_dataset(data, verbose=False)  # on every rank: generating a dataset is a collective
    result = None
    if is_main_process():
        report = evaluate_checkpoint(cfg, checkpoint, progress=progress, dataset=parsed)
        result = {k: report[k] for k in METRICS}
        write_json(path, {**result, STAMP: proof})
    return broadcast_object(result), name


def score(cell: Cell, dataset: str, data: DataConfig, result: dict[str, Any], cells_dir: Path, *,
          progress: bool = True, fingerprints: Fingerprints | None = None) -> dict[str, Any]:
    """{"metrics", "pruned_metrics", "scored_by"} of a finished cell (``result``: its result.json) on ``dataset``.

    ``pruned_metrics`` (right after the cut) exist only as the run measured them: the model
    before fine-tuning is not kept, so a re-scored row has none. ``why``: why a cell's own numbers were
    not used on its own dataset, in words. ``fingerprints``: one per bench run.
    """
    fingerprints = fingerprints or Fingerprints()
    measured = eval_settings(result["config"]) == eval_settings(cell.cfg.to_dict())
    # A training cell finished before its result said where it was scored took its numbers from its last
    # evaluation, which read the validation split when there is one: those are re-scored on the test split.
    on_test = result.get("evaluated_on") == "test" or cell.kind not in ("train", "scratch") \
        or not result["config"]["data"].get("val_ids")
    # The test split it was scored on must be the one there now (its own result recorded its fingerprint).
    recorded = result.get(STAMP, {}).get("data", {}).get("test")
    same_data = broadcast_object(is_main_process() and dataset == cell.dataset
                                 and recorded == fingerprints(data)["test"])
    if dataset == cell.dataset and measured and on_test and same_data:
        return {"metrics": result["metrics"], "pruned_metrics": result.get("pruned_metrics"), "scored_by": RUN}
    why = ("" if dataset != cell.dataset else f"adopted from before the bench checked data: scored on the test "
           f"images of {dataset} there now" if recorded is None and STAMP in result
           else f"the test images of {dataset} changed since the cell ran" if not same_data else "with the bench's evaluation settings" if not measured else "on the test split")
    metrics, name = rescore(cell, dataset, data, cells_dir, progress=progress, fingerprints=fingerprints)
    return {"metrics": metrics, "pruned_metrics": None, "scored_by": name, "why": why}
