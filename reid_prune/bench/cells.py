"""Running one cell, once: its folder is its cache, and under torchrun every rank trains it (DDP).

A cell is finished when ``DIR/cells/KEY/result.json`` exists (written last, atomically). A
rerun reuses a finished cell whose files prove they are its own and whose training data did
not change (trust.py), continues an interrupted training (baseline or scratch) from its
``last.pt`` when it started on the same data, and redoes an interrupted pruning. A cell that
fails leaves no folder, unless it holds a training to continue. Under torchrun rank 0 alone
reads and writes the cell's files and sends what it read to the other ranks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from ..analysis.allocation import rate_for_keep
from ..backbone import build_model, reinitialise
from ..checkpoint import apply_widths, load_model, model_with_new_classifier, read_checkpoint, save_checkpoint
from ..config import Config, ConfigError, read_yaml, validate
from ..config_fields import merge
from ..distributed import barrier, broadcast_object, is_main_process
from ..evaluation import complexity
from ..jobs.evaluate import evaluate_checkpoint
from ..jobs.prune import prune_checkpoint
from ..jobs.train import train
from ..jobs.wiring import parse_dataset, prepare_dataset, with_validation
from ..outputs import atomic_path
from ..runtime import seed_everything
from .anchors import TorchPruningAnchor
from .configs import steps_per_epoch, stretched
from .keys import eval_settings, with_eval_settings
from .plan import Cell
from .sources import copy_source
from .trust import DONE, STAMP, Fingerprints, adopt, cell_files, load_result, problem, stamp

METRICS = ("mAP", "rank1", "rank5", "mINP")
STARTED = "started.json"  # a training's key and data fingerprints, written when it starts: a resume must match them
Log = Callable[[str], None]


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a crash never leaves a half-written marker."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; None when there is none, or (with a warning naming it) when it is not valid JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:  # a truncated file: what it cached is computed again
        warnings.warn(f"{path} is not valid JSON ({exc}; a truncated write?): ignored, what it held is computed "
                      "again", UserWarning, stacklevel=2)
        return None


def cell_checkpoint(cell: Cell, folder: Path) -> Path:
    """The model file a finished cell leaves: the last epoch of a training, or the pruned model."""
    return folder / cell_files(cell)[0]


def model_cost(checkpoint: Path, input_size: tuple[int, int]) -> dict[str, int]:
    """Parameters of the deployed network (the identity classifier is used only in training), and MACs."""
    model = load_model(checkpoint)
    cost = complexity(model, input_size)
    classifier = sum(p.numel() for p in model.classifier.parameters()) if model.classifier is not None else 0
    return {"params": cost["params"] - classifier, "macs": cost["macs"], "classifier_params": classifier}


def scratch_model(model_config: dict[str, Any], widths: dict[str, list[int]]) -> nn.Module:
    """A network at ``widths`` (a pruned checkpoint's) with every weight drawn anew, as a new model's."""
    model = build_model(**{**model_config, "pretrained": "none"})
    apply_widths(model, widths)
    return reinitialise(model, zero_init_residual=model_config["zero_init_residual"])


def _resumable(cell: Cell, folder: Path, data: dict[str, str], log: Log) -> bool:
    """Whether the cell's interrupted training can go on: its ``last.pt`` exists and it started on this data
    (a training started before ``started.json`` existed goes on)."""
    if not (folder / "run" / "last.pt").is_file():
        return False
    started = read_json(folder / STARTED)
    changed = started is not None and {k: v for k, v in started.get("data", {}).items() if k != "test"} != {
        k: v for k, v in data.items() if k != "test"}
    if changed:
        log(f"    {folder}: its interrupted training started on other training images than {cell.dataset}'s now "
            "(their fingerprint changed): starting it again")
    return not changed


def _run_training(cell: Cell, folder: Path, progress: bool, build: Callable[[dict[str, Any]], nn.Module] | None = None,
                  cfg: Config | None = None, *, data: dict[str, str] | None = None,
                  log: Log = print) -> dict[str, Any] | None:
    """Train (or continue training) a baseline or scratch cell (with ``cfg``, default its own); only rank 0
    returns the result. ``data``: the cell's data fingerprints (on rank 0)."""
    run = folder / "run"
    # Under torchrun rank 0 looks at the files and decides for all ranks.
    resume = broadcast_object(is_main_process() and _resumable(cell, folder, data, log))
    cfg = cfg or cell.cfg
    if resume:
        # A resumed run keeps the evaluation settings it started with (check_resume refuses others);
        # scoring.py scores the finished model with the bench's.
        stored = broadcast_object(read_yaml(run / "config.yaml") if is_main_process() else None)
        cfg = with_eval_settings(cfg, eval_settings(stored))
    elif is_main_process():
        shutil.rmtree(folder, ignore_errors=True)  # a stop before the first epoch's checkpoint: start clean
        write_json(folder / STARTED, {"key": cell.key, "data": data})
    barrier()
    summary = train(cfg, output=run, resume=resume, progress=progress, build=build)
    if not is_main_process():
        return None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    # The last epoch is always evaluated and the bench reports it (no pick of the best epoch): on the test split,
    # scored once after training when a validation split took the evaluations during it.
    final = summary.get("test") or records[-1]
    return {"metrics": {k: final[k] for k in METRICS}, "evaluated_on": "test", "config": cfg.to_dict(),
            # Sum of epoch times: counts the epochs of every attempt once, even across resumes.
            "wall_seconds": round(sum(r["seconds"] for r in records), 1)}


def _run_scratch(cell: Cell, folder: Path, cells_dir: Path, progress: bool, **trained: Any) -> dict[str, Any] | None:
    """Train the parent cell's pruned architecture from scratch (Liu et al., ICLR 2019)."""
    widths = read_checkpoint(cell_checkpoint(cell.parent, cells_dir / cell.parent.key))["widths"]
    cfg = cell.cfg
    if cell.extra_steps:  # the bench's train_steps on top of the source's epochs, in whole epochs of this data
        dataset = with_validation(parse_dataset(cfg.data), cfg.data)
        cfg = stretched(cfg, cell.extra_steps, dataset, f"scratch on {cell.dataset}")
    result = _run_training(cell, folder, progress, build=lambda config: scratch_model(config, widths), cfg=cfg,
                           **trained)
    if result is not None and cell.extra_steps:
        result["train_steps"] = cfg.train.epochs * steps_per_epoch(cfg, dataset)  # all from scratch
    return result


def _run_checkpoint(cell: Cell, folder: Path, progress: bool) -> dict[str, Any] | None:
    """A baseline adopted from a checkpoint: the file copied where a training leaves its model (``run/last.pt``),
    checked against the SHA-256 in the cell's key, and scored on the test split; nothing is trained."""
    started = time.perf_counter()
    model = cell_checkpoint(cell, folder)
    if is_main_process():
        shutil.rmtree(folder, ignore_errors=True)
        copy_source(cell.source, model)
    dataset = prepare_dataset(cell.cfg.data, verbose=progress)  # on every rank: generating a dataset is a collective
    barrier()
    if not is_main_process():
        return None
    report = evaluate_checkpoint(cell.cfg, model, progress=progress, dataset=dataset)
    return {"metrics": {k: report[k] for k in METRICS}, "evaluated_on": "test", "config": cell.cfg.to_dict(),
            "checkpoint": {"path": str(cell.source.path), "sha256": cell.source.sha256},
            "wall_seconds": round(time.perf_counter() - started, 1)}


def _with_new_classifier(checkpoint: Path, num_classes: int, seed: int, path: Path) -> Path:
    """A copy of ``checkpoint`` whose identity classifier is new, for the identities of another dataset.

    Every rank builds the same model (the seed decides the classifier); rank 0 writes it.
    """
    seed_everything(seed)
    model = model_with_new_classifier(read_checkpoint(checkpoint), num_classes, seed)
    if is_main_process():
        save_checkpoint(path, model, model.build_config)
    barrier()
    return path


def _widths(folder: Path) -> dict[str, tuple[int, int]]:
    """{group: (channels, kept)} of the groups a finished pruned cell cut (its report.json)."""
    rows = json.loads((folder / "report.json").read_text())["widths"]
    return {r["group"]: (r["channels"], r["kept"]) for r in rows if r["kept"] < r["channels"]}


def at_same_widths(cell: Cell, cells_dir: Path) -> Config:
    """The cell's config with its budget replaced by the per-group rates that keep exactly the widths its
    ``same_widths`` cell kept, at that cell's scope."""
    cfg = copy.deepcopy(cell.cfg)
    rates = {group: rate_for_keep(channels, kept)
             for group, (channels, kept) in _widths(cells_dir / cell.same_widths.key).items()}
    merge(cfg, {"prune": {"rate": None, "target_macs": None, "target_params": None, "target_latency": None,
                          "layer_rates": None}})
    reference = cell.same_widths
    # A Torch-Pruning anchor cuts the residual streams, and the last stage unless told not to.
    where = ({"scope": "all", "include_last_stage": reference.anchor.last_stage} if reference.kind == "anchor"
             else {"scope": reference.cfg.prune.scope})
    merge(cfg, {"prune": {"layer_rates": rates, "allocation": "layer_rates", **where}})
    return validate(cfg)


def _check_same_widths(report: dict[str, Any], reference: Path, cell: Cell) -> None:
    kept = {r["group"]: (r["channels"], r["kept"]) for r in report["widths"] if r["kept"] < r["channels"]}
    if kept != _widths(reference):
        raise RuntimeError(f"bench cell {cell.key} was to keep {cell.same_widths.label}'s widths but kept others; "
                           "report this as a bug")


def _run_prune(cell: Cell, folder: Path, cells_dir: Path, progress: bool) -> dict[str, Any] | None:
    """Prune the parent's model with the cell's method (or Torch-Pruning anchor), fine-tune and evaluate it."""
    if is_main_process():
        shutil.rmtree(folder, ignore_errors=True)  # pruning is not resumable: redo an interrupted one
        folder.mkdir(parents=True)
    barrier()
    start = cell_checkpoint(cell.parent, cells_dir / cell.parent.key)
    started = time.perf_counter()
    if (cell.prune_on or cell.dataset) != cell.pretrain and cell.cfg.loss.id_weight > 0:
        # Pruning (or, with its fine-tuning data, fine-tuning) on other people: the identity loss needs a classifier
        # over the new identities. Pruned with other data, the prune job gives the fine-tuning its own classifier.
        data = cell.prune_data if cell.prune_data is not None else cell.cfg.data
        num_classes = prepare_dataset(data, verbose=False).num_train_pids
        start = _with_new_classifier(start, num_classes, cell.seed, folder / "start.pt")
    anchor = None
    if cell.kind == "anchor":
        anchor = TorchPruningAnchor(cell.anchor.importance, target_macs=cell.target_macs,
                                    input_size=(cell.cfg.data.height, cell.cfg.data.width),
                                    round_to=cell.cfg.prune.round_to, last_stage=cell.anchor.last_stage)
    cfg = at_same_widths(cell, cells_dir) if cell.same_widths is not None else cell.cfg
    report = prune_checkpoint(cfg, start, output=folder, progress=progress, pruner=anchor, prune_data=cell.prune_data)
    if cell.same_widths is not None and is_main_process():
        _check_same_widths(report, cells_dir / cell.same_widths.key, cell)
    if not is_main_process():
        return None
    final = report["finetuned"] or report["pruned"]
    after_cut = report["pruned"]
    return {"metrics": {k: final[k] for k in METRICS}, "config": cell.cfg.to_dict(),
            "pruned_metrics": {k: after_cut[k] for k in METRICS} if after_cut else None,
            "prune_seconds": report["prune_seconds"],
            **{key: report[key] for key in ("train_steps", "mac_weighted_steps")},
            "wall_seconds": round(time.perf_counter() - started, 1)}


def _reusable(cell: Cell, cells_dir: Path, data: dict[str, str], log: Log) -> dict[str, Any] | None:
    """The cell's finished result when its files prove it (trust.py), a result written before the checks
    adopted and stamped; otherwise None, the folder cleared, and a line saying why (rank 0 only)."""
    folder = cells_dir / cell.key
    result, why = load_result(folder / DONE)
    if result is not None:
        why = problem(cell, cells_dir, result, data)
        if not why:
            if STAMP not in result:
                result = adopt(cell, cells_dir, result, data)
                write_json(folder / DONE, result)
                log(f"    {folder}: finished before the bench checked cells' files and data; adopted: the "
                    "fingerprint of its data now and its files' SHA-256 are recorded in its result.json")
            return result
    if why:
        log(f"    {folder}: not reused: {why}; computing the cell again from the start")
        shutil.rmtree(folder)
    return None


@contextlib.contextmanager
def _cleared_on_failure(cell: Cell, folder: Path) -> Iterator[None]:
    """Remove the cell's folder when its computation fails, unless it holds a training to continue."""
    try:
        yield
    except BaseException:
        resumable = cell.kind in ("train", "scratch") and cell.source is None and (folder / "run" / "last.pt").is_file()
        if is_main_process() and not resumable:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def run_cell(cell: Cell, cells_dir: Path, *, progress: bool = True, log: Log = print,
             fingerprints: Fingerprints | None = None) -> tuple[dict[str, Any], bool]:
    """Run ``cell`` unless it is finished and its files prove it (trust.py). Returns (its result, whether it
    was cached).

    ``log`` gets a line when a finished cell is not reused (and why) or is adopted; ``fingerprints``
    (one per bench run) spares listing a dataset again for every cell.

    Raises:
        ValueError: the cell's job refuses its settings (the message names the cell); its folder is removed.
    """
    fingerprints = fingerprints or Fingerprints()
    folder = cells_dir / cell.key
    data = fingerprints.of_cell(cell) if is_main_process() else None
    done = broadcast_object(_reusable(cell, cells_dir, data, log) if is_main_process() else None)
    if done is not None:
        return done, True
    with _cleared_on_failure(cell, folder):
        try:
            if cell.source is not None:
                result = _run_checkpoint(cell, folder, progress)
            elif cell.kind == "train":
                result = _run_training(cell, folder, progress, data=data, log=log)
            elif cell.kind == "scratch":
                result = _run_scratch(cell, folder, cells_dir, progress, data=data, log=log)
            else:
                result = _run_prune(cell, folder, cells_dir, progress)
        except ValueError as exc:  # what the job refused (e.g. a latency budget timed again): name the cell
            if type(exc) not in (ValueError, ConfigError):
                raise
            raise type(exc)(f"bench cell {cell.key} ({cell.describe()}): {exc}") from exc
        if is_main_process():
            result.update(model_cost(cell_checkpoint(cell, folder), (cell.cfg.data.height, cell.cfg.data.width)))
            result["key"] = cell.key
            result[STAMP] = stamp(cell, cells_dir, data)
            write_json(folder / DONE, result)  # last: the marker that the cell is finished
    return broadcast_object(result), False
