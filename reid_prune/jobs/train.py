"""The train job: a :class:`~reid_prune.config.Config` in; config.yaml, last.pt, best.pt and metrics.jsonl out.

From a notebook::

    from reid_prune import load_config, train
    summary = train(load_config("configs/demo.yaml", ["train.epochs=2"]), output="runs/notebook")
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..analysis.curves import read_metrics_file
from ..backbone import build_model
from ..checkpoint import model_from_checkpoint, read_checkpoint, remove_stale_temporaries
from ..config import Config, ConfigError, changed_keys, config_from_dict, dump_config, tagged_keys
from ..data.loaders import UnreadableImageError, unreadable_image_line
from ..distributed import is_main_process
from ..engine import Trainer
from ..engine.tensorboard import open_log
from ..evaluation import complexity
from ..outputs import atomic_path, check_output_dir
from ..precision import AMP_FOR_PRECISION, MEMORY_FORMATS, PRECISIONS, ComputeSettings, cpu_has_native_bf16
from ..runtime import Runtime, seed_everything
from .wiring import decision_loaders, make_eval_loaders, make_train_loader, model_config_for, prepare_dataset

# What a resumed run may change: how fast it runs, how long, and how it is watched; never what it computes.
RESUMABLE_KEYS = tagged_keys(Config(), "runtime") + tagged_keys(Config(), "resumable")
# Sections and keys training never reads (they prune or evaluate): a resume does not compare them.
NOT_TRAINING = tagged_keys(Config(), "not_training")
# The config keys that choose what last.pt's "compute" record holds.
COMPUTE_KEYS = {"precision": "train.amp", "memory_format": "train.channels_last"}


def prepare_output(output: str | Path, *, resume: bool) -> Path:
    """Check the run folder: writable, a new run must not overwrite one, a resumed run needs last.pt."""
    out = check_output_dir(output, "--output")
    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: {out / 'last.pt'} does not exist; train into {out} first")
    else:
        for name in ("last.pt", "best.pt"):
            if (out / name).exists():
                raise FileExistsError(f"{out} already holds a run ({name}); pass --resume to continue it or choose "
                                      "another --output")
    return out


def check_resume(cfg: Config, ckpt: dict[str, Any], path: Path, runtime: Runtime) -> Runtime:
    """Refuse to resume ``ckpt`` (a run's last.pt) with a config that changes more than :data:`RESUMABLE_KEYS`.

    The weights, optimiser state and schedule in ``last.pt`` belong to the config stored with
    them; training them on under another architecture, loss or data would go on silently
    with the old weights and then label them wrongly. ``train.amp`` and ``train.channels_last``
    are judged by what they resolve to (:func:`resumed_compute`) when ``last.pt`` records it.

    Returns:
        ``runtime`` with the precision and memory format the resumed run trains in.

    Raises:
        ValueError: naming every changed key that may not change, or when ``train.epochs`` is
            below the epochs already trained.
    """
    stored = ckpt.get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"--resume: {path} holds no run config (it was not written by train); "
                         "start a new run in another --output")
    try:
        before = config_from_dict(stored).to_dict()
    except ConfigError as exc:
        raise ValueError(f"--resume: the config stored in {path} is not valid today ({exc}); "
                         "start a new run in another --output") from None
    record = ckpt.get("compute")
    # With a record, these two settings may change as long as they resolve to what the run recorded.
    judged_by_record = tuple(COMPUTE_KEYS.values()) if record else ()
    changed = {k: v for k, v in changed_keys(before, cfg.to_dict()).items()
               if k not in RESUMABLE_KEYS and k not in judged_by_record and not k.startswith(NOT_TRAINING)}
    if changed:
        listing = ", ".join(f"{key} ({_yaml(old)} -> {_yaml(new)})" for key, (old, new) in changed.items())
        raise ValueError(f"--resume: the config changes {listing} from the run in {path.parent}; a resumed run may "
                         f"change only {', '.join(RESUMABLE_KEYS)}. Resume with the run's own config "
                         f"({path.parent / 'config.yaml'}), or train the new config into another --output")
    if cfg.train.epochs < int(ckpt["epoch"]):
        raise ValueError(f"--resume: {path} has trained {ckpt['epoch']} epochs already, more than "
                         f"train.epochs={cfg.train.epochs}; set train.epochs to {ckpt['epoch']} or more")
    if cfg.train.scheduler == "cosine" and cfg.train.epochs != before["train"]["epochs"]:
        warnings.warn(f"--resume with train.epochs {before['train']['epochs']} -> {cfg.train.epochs}: the cosine "
                      "schedule is stretched over the new length, so the learning rate of the remaining epochs differs "
                      "from the first run's curve", UserWarning, stacklevel=2)
    if not record:  # a checkpoint from before the record: the config comparison above decided
        return runtime
    return replace(runtime, compute=resumed_compute(cfg, record, path, runtime.compute))


def resumed_compute(cfg: Config, record: Any, path: Path, here: ComputeSettings) -> ComputeSettings:
    """The precision and memory format a resumed run trains in: those ``record`` (last.pt's ``compute``) holds.

    ``auto`` (``train.amp``, ``train.channels_last``) follows the record, so a run goes on as it
    was trained on any machine (an fp32 run stays fp32 on a CPU with bf16); an explicit setting
    must resolve to the recorded value. ``here``: what the config resolves to on this machine.

    Raises:
        ValueError: an explicit setting resolves to something else (the message names the settings
            that continue the run), the record is unreadable, or it holds fp16 and the device is no GPU.
    """
    precision = record.get("precision") if isinstance(record, dict) else None
    layout = record.get("memory_format") if isinstance(record, dict) else None
    if precision not in PRECISIONS or layout not in MEMORY_FORMATS:
        raise ValueError(f"--resume: {path} records an unknown precision or memory format ({record!r}); "
                         "start a new run in another --output")
    asked = {"precision": cfg.train.amp, "memory_format": cfg.train.channels_last}
    now = {"precision": precision if asked["precision"] == "auto" else here.precision,
           "memory_format": layout if asked["memory_format"] == "auto" else here.memory_format_name}
    wrong = [field for field, value in now.items() if value != record[field]]
    if wrong:
        fix = {"precision": AMP_FOR_PRECISION[precision], "memory_format": layout == "channels_last"}
        gives = " and ".join(f"{COMPUTE_KEYS[f]}={_setting(asked[f])} gives {f} {now[f]}" for f in wrong)
        raise ValueError(f"--resume: {path} was trained with precision {precision}, memory_format {layout}, but "
                         f"{gives} here; continue it exactly with "
                         f"{' '.join(f'--set {COMPUTE_KEYS[f]}={_setting(fix[f])}' for f in wrong)}, or with auto, "
                         "which resumes in the recorded setting")
    if precision == "fp16" and here.device.type != "cuda":
        raise ValueError(f"--resume: {path} was trained with fp16 autocast, which runs on CUDA only; resume it on a "
                         "GPU (--set train.device=cuda)")
    if precision != here.precision and precision == "bf16" and here.device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"--resume: {path} was trained with bf16 autocast, which this CPU emulates (slower than fp32); "
                      "it goes on in bf16, as recorded",
                      UserWarning, stacklevel=2)
    return ComputeSettings(here.device, precision, layout == "channels_last")


def kept_files(out: Path) -> str:
    """What a run stopped mid-training leaves in ``out``, for its error message (files of earlier epochs stay)."""
    names = sorted(p.name for p in out.iterdir() if p.is_file()) if out.is_dir() else []
    if not names:
        return "nothing was written"
    resume = " (--resume continues from last.pt once the image is fixed)" if "last.pt" in names else ""
    return f"kept in '{out}': {', '.join(names)}{resume}"


def _yaml(value: Any) -> str:
    """A config value as YAML spells it (null, true, [1, 2])."""
    return json.dumps(value, default=str)


def _setting(value: Any) -> str:
    """A config value as ``--set`` takes it (true, bf16)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def train(cfg: Config, *, output: str | Path | None = None, resume: bool = False, progress: bool = True,
          build: Callable[[dict[str, Any]], nn.Module] | None = None) -> dict[str, Any]:
    """Train the configured model; writes config.yaml, last.pt, best.pt and metrics.jsonl under ``output``.

    Under torchrun every rank calls this; each loads the same weights (the seed, or
    ``last.pt`` when resuming) and only rank 0 writes files. ``build`` makes the first
    model from :func:`model_config_for`'s arguments, after the seed is set (default:
    :func:`~reid_prune.backbone.build_model`), e.g. a pruned architecture trained from scratch;
    a resumed run rebuilds whatever ``last.pt`` holds.

    The trainer evaluates (and chooses ``best.pt``) on the validation split when ``data.val_ids``
    carves one, and the finished model (the last epoch's) is then scored once on the test split.

    ``cfg.train.tensorboard`` also logs every epoch's record (and the test score) for TensorBoard
    (:mod:`~reid_prune.engine.tensorboard`; needs the tensorboard extra, checked before any work).

    Returns {"best": {...}, "last": {...}, "output": str, "complexity": {...}, "precision": str,
    "memory_format": str, "evaluated_on": "validation" or "test"}, plus "test" (the finished
    model's test metrics) with a validation split.
    """
    out = prepare_output(output or cfg.output, resume=resume)
    metrics = out / "metrics.jsonl"
    if metrics.is_dir():  # the trainer rewrites it: a folder there would fail mid-run
        raise ValueError(f"{metrics} is a folder, not the run's metrics file; move or delete it "
                         f"(a {'--resume' if resume else 'new run'} writes metrics.jsonl there)")
    log = open_log(cfg.train.tensorboard, out)  # a missing package stops here, before any work
    ckpt = read_checkpoint(out / "last.pt") if resume else None
    runtime = Runtime.from_config(cfg.train)  # a bad device or precision fails before any file
    if ckpt is not None:
        runtime = check_resume(cfg, ckpt, out / "last.pt", runtime)
    # A kill while a line was appended leaves it cut short (dropped, with a warning); other bad lines stop here.
    read = read_metrics_file(metrics) if resume and metrics.is_file() else None
    dataset = prepare_dataset(cfg.data, verbose=progress)
    model_config = model_config_for(cfg, dataset.num_train_pids)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt)
    else:
        seed_everything(cfg.train.seed)  # the initial weights depend on the seed alone
        model = build(model_config) if build is not None else build_model(**model_config)
    train_loader = make_train_loader(cfg, dataset, runtime)
    query_loader, gallery_loader = decision_loaders(cfg, dataset)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt"):
            remove_stale_temporaries(out / name)  # left by a kill during a checkpoint write
        dump_config(cfg, out / "config.yaml")
        if read is not None and read[1]:  # the trainer reads every line again
            with atomic_path(metrics) as tmp:
                tmp.write_text("".join(json.dumps(record) + "\n" for record in read[0]))
    trainer = Trainer(cfg, model, model_config, train_loader, query_loader, gallery_loader, output_dir=out,
                      progress=progress, runtime=runtime, on_record=log.record if log else None)
    try:
        if resume:
            trainer.resume()
        summary = trainer.fit()
        summary["evaluated_on"] = "validation" if dataset.val_query else "test"
        if dataset.val_query:
            summary["test"] = trainer.evaluate(*make_eval_loaders(cfg, dataset))  # the test split, scored once
            if log:
                log.metrics("test", summary["test"], step=trainer.train_cfg.epochs)
    except UnreadableImageError as exc:  # data.check_images=off without the cache: met only when a loader reads it
        raise ValueError(f"{unreadable_image_line(exc)}; {kept_files(out)}") from None
    finally:
        if log:
            log.close()
    summary["output"] = str(out)
    summary["precision"], summary["memory_format"] = trainer.compute.precision, trainer.compute.memory_format_name
    summary["complexity"] = complexity(trainer.model, (cfg.data.height, cfg.data.width))
    return summary


