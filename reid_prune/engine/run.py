"""End-to-end jobs built from a :class:`~reid_prune.config.Config`: train a model, evaluate a checkpoint.

These are the functions the CLI calls, and the ones to call from a notebook::

    from reid_prune.config import load_config
    from reid_prune.engine import train, evaluate_checkpoint

    cfg = load_config("configs/demo.yaml", ["train.epochs=2"])
    summary = train(cfg, output="runs/notebook")
    report = evaluate_checkpoint(cfg, "runs/notebook/best.pt")
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..backbone import build_model
from ..checkpoint import model_from_checkpoint, read_checkpoint, remove_stale_temporaries
from ..config import RUNTIME_KEYS, Config, ConfigError, DataConfig, changed_keys, config_from_dict, dump_config
from ..data import (ReIDDataset, Sample, build_dataset, build_eval_loader, build_train_loader, build_transforms,
                    check_dataset_images, decode_images, generate_synthetic, should_cache)
from ..data.cache import decoded_bytes
from ..distributed import distributed_context, is_main_process, main_process_first
from ..evaluation import complexity, measure_latency
from ..outputs import check_output_dir
from ..precision import ComputeSettings, model_memory_format
from .trainer import Trainer, evaluate_with_config, resolve_device, seed_everything

METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")
# What a resumed run may change: how long it runs and how it is watched, never what it computes.
RESUMABLE_KEYS = (*RUNTIME_KEYS, "train.epochs", "train.eval_every")
# Sections and keys training never reads (they prune or evaluate): a resume does not compare them.
NOT_TRAINING = ("prune.", "eval.", "model.retrieval_feature")


def cache_dir() -> Path:
    """Where generated data is kept: ``$REID_PRUNE_CACHE`` or ``~/.cache/reid_prune``."""
    return Path(os.environ.get("REID_PRUNE_CACHE", Path.home() / ".cache" / "reid_prune"))


def synthetic_root(data: DataConfig) -> Path:
    """The folder of the configured synthetic dataset (generation is deterministic, so it is cached)."""
    if data.root:
        return Path(data.root)
    s = data.synthetic
    return cache_dir() / f"synthetic-ids{s.ids}-test{s.test_ids}-cams{s.cameras}-img{s.images_per_camera}-seed{s.seed}"


def parse_dataset(data: DataConfig, *, verbose: bool = False) -> ReIDDataset:
    """Read the configured dataset's file names (no image is opened); the synthetic one must exist."""
    if data.dataset == "synthetic":
        return build_dataset("market_layout", synthetic_root(data), name="synthetic", verbose=verbose)
    return build_dataset(data.dataset, data.root, name=data.name or None, cuhk03_variant=data.cuhk03_variant,
                         verbose=verbose)


def prepare_dataset(data: DataConfig, *, verbose: bool = True) -> ReIDDataset:
    """Parse the configured dataset, generating the synthetic one first when needed, and check its images.

    Every image is decoded once as ``data.check_images`` says (error, skip or off), so an
    unreadable file stops the run now, naming it, instead of hours into training.
    Under torchrun rank 0 generates while the other ranks wait, and only rank 0 prints the summary.
    """
    verbose = verbose and is_main_process()
    if data.dataset == "synthetic":
        root = synthetic_root(data)
        with main_process_first():
            if not (root / "bounding_box_train").is_dir():
                check_output_dir(root, "data.root" if data.root else "the synthetic data cache ($REID_PRUNE_CACHE)")
                s = data.synthetic
                generate_synthetic(root, num_ids=s.ids, num_test_ids=s.test_ids, num_cameras=s.cameras,
                                   images_per_camera=s.images_per_camera, seed=s.seed)
    dataset = check_dataset_images(parse_dataset(data), data.check_images, threads=max(1, data.workers))
    if verbose:
        print(dataset.summary())
    return dataset


def cached_images(data: DataConfig, dataset: ReIDDataset, samples: list[Sample]) -> Tensor | None:
    """``samples`` decoded into memory when ``data.cache`` says so (auto: judged on the whole dataset), else None."""
    num_images = len(dataset.train) + len(dataset.query) + len(dataset.gallery)
    if not should_cache(data.cache, decoded_bytes(num_images, data.height, data.width)):
        return None
    return decode_images(samples, data.height, data.width, workers=data.workers)


def make_train_loader(cfg: Config, dataset: ReIDDataset) -> DataLoader:
    """The P x K training loader of this rank (whole identities per rank under torchrun)."""
    d, t = cfg.data, cfg.data.transforms
    rank, world = distributed_context()
    transform = build_transforms(d.height, d.width, train=True, flip_prob=t.flip_prob, pad=t.pad,
                                 random_erasing=t.random_erasing, mean=t.mean, std=t.std)
    pin = resolve_device(cfg.train.device).type == "cuda"
    return build_train_loader(dataset.train, transform, p=d.p, k=d.k, seed=cfg.train.seed, workers=d.workers,
                              num_replicas=world, rank=rank, pin_memory=pin,
                              images=cached_images(d, dataset, dataset.train))


def make_eval_loaders(cfg: Config, dataset: ReIDDataset) -> tuple[DataLoader, DataLoader]:
    """(query loader, gallery loader), in file order, without augmentation."""
    d = cfg.data
    transform = build_transforms(d.height, d.width, train=False, mean=d.transforms.mean, std=d.transforms.std)
    return tuple(build_eval_loader(split, transform, batch_size=d.eval_batch_size, workers=d.workers,
                                   images=cached_images(d, dataset, split))
                 for split in (dataset.query, dataset.gallery))


def model_config_for(cfg: Config, num_classes: int) -> dict[str, Any]:
    """build_model keyword arguments; a classifier is added only when the identity loss is on."""
    m = cfg.model
    return {
        "arch": m.arch, "last_stride": m.last_stride, "pooling": m.pooling, "neck": m.neck,
        "embedding_dim": m.embedding_dim, "num_classes": num_classes if cfg.loss.id_weight > 0 else 0,
        "retrieval_feature": m.retrieval_feature,
        "pretrained": m.pretrained, "zero_init_residual": m.zero_init_residual,
    }


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


def check_resume(cfg: Config, ckpt: dict[str, Any], path: Path) -> None:
    """Refuse to resume ``ckpt`` (a run's last.pt) with a config that changes more than :data:`RESUMABLE_KEYS`.

    The weights, optimiser state and schedule in ``last.pt`` belong to the config stored with
    them; training them on under another architecture, loss or data would go on silently
    with the old weights and then label them wrongly.

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
    changed = {k: v for k, v in changed_keys(before, cfg.to_dict()).items()
               if k not in RESUMABLE_KEYS and not k.startswith(NOT_TRAINING)}
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
    compute = ComputeSettings.from_config(cfg.train, resolve_device(cfg.train.device))
    stored_compute = ckpt.get("compute") or {}
    now = {"precision": compute.precision, "memory_format": compute.memory_format_name}
    different = {k: (v, now[k]) for k, v in stored_compute.items() if k in now and v != now[k]}
    if different:
        listing = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in different.items())
        raise ValueError(f"--resume: {path} was trained with {', '.join(f'{k} {v}' for k, v in stored_compute.items())}, "
                         f"but train.amp / train.channels_last resolve here to {listing}; set train.amp and "
                         "train.channels_last to what the run used (e.g. --set train.amp=bf16) to continue it exactly")


def _yaml(value: Any) -> str:
    """A config value as YAML spells it (null, true, [1, 2])."""
    return json.dumps(value, default=str)


def train(cfg: Config, *, output: str | Path | None = None, resume: bool = False, progress: bool = True,
          build: Callable[[dict[str, Any]], nn.Module] | None = None) -> dict[str, Any]:
    """Train the configured model; writes config.yaml, last.pt, best.pt and metrics.jsonl under ``output``.

    Under torchrun every rank calls this; each loads the same weights (the seed, or
    ``last.pt`` when resuming) and only rank 0 writes files. ``build`` makes the first
    model from :func:`model_config_for`'s arguments, after the seed is set (default:
    :func:`~reid_prune.backbone.build_model`), e.g. a pruned architecture trained from scratch;
    a resumed run rebuilds whatever ``last.pt`` holds.

    Returns {"best": {...}, "last": {...}, "output": str, "complexity": {...}, "precision": str,
    "memory_format": str}.
    """
    out = prepare_output(output or cfg.output, resume=resume)
    ckpt = read_checkpoint(out / "last.pt") if resume else None
    if ckpt is not None:
        check_resume(cfg, ckpt, out / "last.pt")
    ComputeSettings.from_config(cfg.train, resolve_device(cfg.train.device))  # a bad precision fails before any file
    dataset = prepare_dataset(cfg.data, verbose=progress)
    model_config = model_config_for(cfg, dataset.num_train_pids)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt)
    else:
        seed_everything(cfg.train.seed)  # the initial weights depend on the seed alone
        model = build(model_config) if build is not None else build_model(**model_config)
    train_loader = make_train_loader(cfg, dataset)
    query_loader, gallery_loader = make_eval_loaders(cfg, dataset)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        for name in ("last.pt", "best.pt"):
            remove_stale_temporaries(out / name)  # left by a kill during a checkpoint write
        dump_config(cfg, out / "config.yaml")
    trainer = Trainer(cfg, model, model_config, train_loader, query_loader, gallery_loader, output_dir=out,
                      progress=progress)
    if resume:
        trainer.resume()
    summary = trainer.fit()
    summary["output"] = str(out)
    summary["precision"], summary["memory_format"] = trainer.compute.precision, trainer.compute.memory_format_name
    summary["complexity"] = complexity(trainer.model, (cfg.data.height, cfg.data.width))
    return summary


def check_architecture(cfg: Config, ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose architecture differs from the config's model.arch."""
    arch = ckpt["model_config"]["arch"]
    if arch != cfg.model.arch:
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {arch} but the config's model.arch is {cfg.model.arch}; "
            f"pass the matching config or --set model.arch={arch}"
        )


def model_report(model: nn.Module, cfg: Config, query_loader: DataLoader, gallery_loader: DataLoader, *,
                 progress: bool = True, latency: bool | None = None) -> dict[str, Any]:
    """Rank metrics, parameters, MACs/FLOPs and (optionally) latency of ``model``: one number source for all.

    The features and the latency follow the config's precision and memory format on its
    device; ``latency_setting`` names them (device, precision, memory_format, threads), and
    ``memory_format`` is the layout the model's weights were evaluated in.
    """
    device = resolve_device(cfg.train.device)
    compute = ComputeSettings.from_config(cfg.train, device)
    metrics = evaluate_with_config(model, cfg, query_loader, gallery_loader, device=device, progress=progress)
    size = (cfg.data.height, cfg.data.width)
    report: dict[str, Any] = {k: metrics[k] for k in METRIC_KEYS}
    report["num_valid_queries"] = metrics["num_valid_queries"]
    report["precision"], report["memory_format"] = compute.precision, model_memory_format(model)
    report.update(complexity(model, size))
    if cfg.eval.latency if latency is None else latency:
        report["latency_ms"] = measure_latency(model, size, batch_sizes=tuple(cfg.eval.latency_batch_sizes),
                                               device=device, precision=compute.precision,
                                               channels_last=compute.channels_last)
        report["latency_setting"] = compute.describe()
    return report


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, *, progress: bool = True,
                        dataset: ReIDDataset | None = None) -> dict[str, Any]:
    """Evaluate a saved model (pruned or not) on the configured dataset's query/gallery split.

    ``dataset``: the parsed ``cfg.data`` when the caller has it. Under torchrun, preparing a
    dataset is a collective, so a caller that evaluates on rank 0 alone prepares it on all ranks first.

    Returns :func:`model_report`'s dict plus ``dataset``, the dataset's display name (``data.name``).
    """
    ckpt = read_checkpoint(checkpoint)
    check_architecture(cfg, ckpt, checkpoint)
    model = model_from_checkpoint(ckpt)
    # The retrieval feature is an evaluation choice, not a weight: the config decides it.
    model.set_retrieval_feature(cfg.model.retrieval_feature)
    if dataset is None:
        dataset = prepare_dataset(cfg.data, verbose=progress)
    query_loader, gallery_loader = make_eval_loaders(cfg, dataset)
    return {"dataset": dataset.name, **model_report(model, cfg, query_loader, gallery_loader, progress=progress)}
