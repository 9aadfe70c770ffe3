"""A torch Dataset over re-ID samples, and the train / eval DataLoader builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .datasets import Sample
from .sampler import PKSampler


class ImageDataset(Dataset):
    """Items ``(image (3, H, W), pid, camid, index)`` read from a list of :class:`Sample`.

    Images are opened with PIL and converted to RGB before ``transform``. With ``images``
    (the (N, 3, H, W) uint8 tensor of :func:`~reid_prune.data.cache.decode_images`, one row
    per sample), ``transform`` gets the cached row instead and no file is read.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, images: Tensor | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        if images is not None and len(images) != len(self.samples):
            raise ValueError(f"ImageDataset: {len(images)} cached images for {len(self.samples)} samples")
        self.images = images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, int]:
        sample = self.samples[index]
        if self.images is not None:
            return self.transform(self.images[index]), sample.pid, sample.camid, index
        try:
            with Image.open(sample.path) as file:
                image = file.convert("RGB")
        except OSError as err:
            raise OSError(f"could not read image '{sample.path}' (item {index}): {err}") from err
        return self.transform(image), sample.pid, sample.camid, index


def build_train_loader(
    samples: Sequence[Sample],
    transform: Callable,
    *,
    p: int,
    k: int,
    seed: int,
    workers: int,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    images: Tensor | None = None,
) -> DataLoader:
    """A loader of P x K batches (see :class:`PKSampler`); call ``loader.batch_sampler.set_epoch(e)`` each epoch.

    Worker processes draw their augmentation seeds from a generator seeded by
    ``(seed, rank)``, so runs with the same seed augment identically. ``images``: the
    samples' decoded images (see :class:`ImageDataset`).
    """
    sampler = PKSampler([s.pid for s in samples], p, k, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        ImageDataset(samples, transform, images),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])),
    )


def build_eval_loader(
    samples: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool = False,
    images: Tensor | None = None,
) -> DataLoader:
    """A loader over ``samples`` in order, keeping the last incomplete batch; ``images`` as in :class:`ImageDataset`."""
    return DataLoader(
        ImageDataset(samples, transform, images),
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        pin_memory=pin_memory,
    )
