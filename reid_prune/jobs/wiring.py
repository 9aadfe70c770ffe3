"""Wiring: the dataset, its loaders and the model's build arguments, made from a :class:`~reid_prune.config.Config`.

Every job builds its data the same way through these functions, so a model is trained,
pruned and scored on the same splits, transforms and P x K batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import DataLoader

from ..config import Config, DataConfig
from ..data import (ReIDDataset, Sample, build_dataset, build_eval_loader, build_train_loader, build_transforms,
                    check_dataset_images, decode_images, generate_synthetic, should_cache)
from ..data.cache import decoded_bytes
from ..data.validation import carve_validation
from ..distributed import is_main_process, main_process_first
from ..outputs import check_output_dir
from ..runtime import Runtime, cache_dir, check_cache_dir


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


def with_validation(dataset: ReIDDataset, data: DataConfig) -> ReIDDataset:
    """``dataset`` with ``data.val_ids`` training identities carved into its validation split (as it is at 0)."""
    return carve_validation(dataset, data.val_ids, data.val_seed) if data.val_ids else dataset


def prepare_dataset(data: DataConfig, *, verbose: bool = True) -> ReIDDataset:
    """Parse the configured dataset, generating the synthetic one first when needed, and check its images.

    Every image is decoded once as ``data.check_images`` says (error, skip or off), so an
    unreadable file stops the run now, naming it, instead of hours into training.
    Under torchrun rank 0 generates while the other ranks wait, and only rank 0 prints the summary.
    With ``data.val_ids``, that many training identities become the validation split
    (:func:`~reid_prune.data.validation.carve_validation`), which every decision reads instead of the test split.
    """
    verbose = verbose and is_main_process()
    if data.dataset == "synthetic":
        root = synthetic_root(data)
        with main_process_first():
            if not (root / "bounding_box_train").is_dir():
                check_output_dir(root, "data.root") if data.root else check_cache_dir(root.name)
                s = data.synthetic
                generate_synthetic(root, num_ids=s.ids, num_test_ids=s.test_ids, num_cameras=s.cameras,
                                   images_per_camera=s.images_per_camera, seed=s.seed)
    dataset = with_validation(check_dataset_images(parse_dataset(data), data.check_images,
                                                   threads=max(1, data.workers)), data)
    if verbose:
        print(dataset.summary())
    return dataset


def cached_images(data: DataConfig, dataset: ReIDDataset, samples: list[Sample]) -> Tensor | None:
    """``samples`` decoded into memory when ``data.cache`` says so (auto: judged on the whole dataset), else None."""
    num_images = sum(len(split) for split in (dataset.train, dataset.query, dataset.gallery, dataset.val_query,
                                              dataset.val_gallery))
    if not should_cache(data.cache, decoded_bytes(num_images, data.height, data.width)):
        return None
    return decode_images(samples, data.height, data.width, workers=data.workers)


def make_train_loader(cfg: Config, dataset: ReIDDataset, runtime: Runtime | None = None) -> DataLoader:
    """The P x K training loader of this rank (whole identities per rank under torchrun).

    ``runtime``: the job's (default: resolved from ``cfg.train``); batches are pinned for CUDA.
    """
    d, t = cfg.data, cfg.data.transforms
    runtime = runtime or Runtime.from_config(cfg.train)
    transform = build_transforms(d.height, d.width, train=True, flip_prob=t.flip_prob, pad=t.pad,
                                 random_erasing=t.random_erasing, mean=t.mean, std=t.std)
    return build_train_loader(dataset.train, transform, p=d.p, k=d.k, seed=cfg.train.seed, workers=d.workers,
                              num_replicas=runtime.world_size, rank=runtime.rank,
                              pin_memory=runtime.device.type == "cuda",
                              images=cached_images(d, dataset, dataset.train))


def make_eval_loaders(cfg: Config, dataset: ReIDDataset, *, validation: bool = False) -> tuple[DataLoader, DataLoader]:
    """(query loader, gallery loader) of the test split, or with ``validation`` of the validation split;
    in file order, without augmentation.

    Raises:
        ValueError: ``validation`` without a validation split (``data.val_ids`` is 0).
    """
    if validation and not dataset.val_query:
        raise ValueError("no validation split: set data.val_ids to the number of training identities to carve")
    d = cfg.data
    transform = build_transforms(d.height, d.width, train=False, mean=d.transforms.mean, std=d.transforms.std)
    splits = (dataset.val_query, dataset.val_gallery) if validation else (dataset.query, dataset.gallery)
    return tuple(build_eval_loader(split, transform, batch_size=d.eval_batch_size, workers=d.workers,
                                   images=cached_images(d, dataset, split))
                 for split in splits)


def decision_loaders(cfg: Config, dataset: ReIDDataset) -> tuple[DataLoader, DataLoader]:
    """The query and gallery loaders every decision reads: the validation split when there is one, else the
    test split (``data.val_ids: 0``, the behaviour of runs before the validation split existed)."""
    return make_eval_loaders(cfg, dataset, validation=bool(dataset.val_query))


def model_config_for(cfg: Config, num_classes: int) -> dict[str, Any]:
    """build_model keyword arguments; a classifier is added only when the identity loss is on."""
    m = cfg.model
    return {
        "arch": m.arch, "last_stride": m.last_stride, "pooling": m.pooling, "neck": m.neck,
        "embedding_dim": m.embedding_dim, "num_classes": num_classes if cfg.loss.id_weight > 0 else 0,
        "retrieval_feature": m.retrieval_feature,
        "pretrained": m.pretrained, "zero_init_residual": m.zero_init_residual,
    }


