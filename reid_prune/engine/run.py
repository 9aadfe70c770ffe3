"""End-to-end jobs built from a :class:`~reid_prune.config.Config`: train a model, evaluate a checkpoint.

These are the functions the CLI calls, and the ones to call from a notebook::

    from reid_prune.config import load_config
    from reid_prune.engine import train, evaluate_checkpoint

    cfg = load_config("configs/demo.yaml", ["train.epochs=2"])
    summary = train(cfg, output="runs/notebook")
    report = evaluate_checkpoint(cfg, "runs/notebook/best.pt")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..backbone import build_model
from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..config import Config, DataConfig, dump_config
from ..data import (ReIDDataset, Sample, build_dataset, build_eval_loader, build_train_loader, build_transforms,
                    decode_images, generate_synthetic, should_cache)
from ..data.cache import decoded_bytes
from ..distributed import distributed_context, is_main_process, main_process_first
from ..evaluation import complexity, measure_latency
from ..precision import ComputeSettings, model_memory_format
from .trainer import Trainer, evaluate_with_config, resolve_device, seed_everything

METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def cache_dir() -> Path:
    """Where generated data is kept: ``$REID_PRUNE_CACHE`` or ``~/.cache/reid_prune``."""
    return Path(os.environ.get("REID_PRUNE_CACHE", Path.home() / ".cache" / "reid_prune"))


def synthetic_root(data: DataConfig) -> Path:
    """The folder of the configured synthetic dataset (generation is deterministic, so it is cached)."""
    if data.root:
        return Path(data.root)
    s = data.synthetic
    return cache_dir() / f"synthetic-ids{s.ids}-test{s.test_ids}-cams{s.cameras}-img{s.images_per_camera}-seed{s.seed}"


def prepare_dataset(data: DataConfig, *, verbose: bool = True) -> ReIDDataset:
    """Parse the configured dataset, generating the synthetic one first when needed.

    Under torchrun rank 0 generates while the other ranks wait, and only rank 0 prints the summary.
    """
    verbose = verbose and is_main_process()
    if data.dataset == "synthetic":
        root = synthetic_root(data)
        with main_process_first():
            if not (root / "bounding_box_train").is_dir():
                s = data.synthetic
                generate_synthetic(root, num_ids=s.ids, num_test_ids=s.test_ids, num_cameras=s.cameras,
                                   images_per_camera=s.images_per_camera, seed=s.seed)
        return build_dataset("market_layout", root, name="synthetic", verbose=verbose)
    return build_dataset(data.dataset, data.root, name=data.name or None, cuhk03_variant=data.cuhk03_variant,
                         verbose=verbose)


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
    """Check the run folder: a new run must not overwrite one, a resumed run needs last.pt."""
    out = Path(output)
    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: {out / 'last.pt'} does not exist; train into {out} first")
    elif (out / "last.pt").exists():
        raise FileExistsError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --output")
    return out


def train(cfg: Config, *, output: str | Path | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train the configured model; writes config.yaml, last.pt, best.pt and metrics.jsonl under ``output``.

    Under torchrun every rank calls this; each loads the same weights (the seed, or
    ``last.pt`` when resuming) and only rank 0 writes files.

    Returns {"best": {...}, "last": {...}, "output": str, "complexity": {...}, "precision": str,
    "memory_format": str}.
    """
    out = prepare_output(output or cfg.output, resume=resume)
    ComputeSettings.from_config(cfg.train, resolve_device(cfg.train.device))  # a bad precision fails before any file
    dataset = prepare_dataset(cfg.data, verbose=progress)
    model_config = model_config_for(cfg, dataset.num_train_pids)
    if resume:
        model = model_from_checkpoint(read_checkpoint(out / "last.pt"))
    else:
        seed_everything(cfg.train.seed)  # the initial weights depend on the seed alone
        model = build_model(**model_config)
    train_loader = make_train_loader(cfg, dataset)
    query_loader, gallery_loader = make_eval_loaders(cfg, dataset)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
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
    """
    ckpt = read_checkpoint(checkpoint)
    check_architecture(cfg, ckpt, checkpoint)
    model = model_from_checkpoint(ckpt)
    # The retrieval feature is an evaluation choice, not a weight: the config decides it.
    model.set_retrieval_feature(cfg.model.retrieval_feature)
    if dataset is None:
        dataset = prepare_dataset(cfg.data, verbose=progress)
    query_loader, gallery_loader = make_eval_loaders(cfg, dataset)
    return model_report(model, cfg, query_loader, gallery_loader, progress=progress)
