"""A torch Dataset over re-ID samples, and the train / eval DataLoader builders."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .datasets import Sample
from .images import READ_ERRORS, read_rgb
from .sampler import PKSampler


class UnreadableImageError(OSError, ValueError):
    """An image that cannot be decoded while a loader reads it (nothing checked it up front: ``data.check_images: off``).

    An OSError for the code that catches read failures, and a ValueError, so that commands report it as
    a user's input (exit 2, one line), as the up-front check does.
    """


def unreadable_image_line(error: UnreadableImageError) -> str:
    """The error's own one-line message, also when a DataLoader worker re-raised it with its traceback in the text."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    prefix = f"{UnreadableImageError.__module__}.{UnreadableImageError.__qualname__}: "
    return last.split(prefix, 1)[1] if prefix in last else last


class ImageDataset(Dataset):
    """Items ``(image (3, H, W), pid, camid, index)`` read from a list of :class:`Sample`.

    Images are decoded to 8-bit RGB by :func:`~reid_prune.data.images.read_rgb` before
    ``transform``. With ``images`` (the (N, 3, H, W) uint8 tensor of
    :func:`~reid_prune.data.cache.decode_images`, one row per sample), ``transform`` gets the
    cached row instead and no file is read. A key may be an index or ``(index, seed)``: with
    a seed, the random transforms draw from a torch generator state set by that seed alone,
    so an item's augmentation does not depend on which process loads it or what it loaded before.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, images: Tensor | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        if images is not None and len(images) != len(self.samples):
            raise ValueError(f"ImageDataset: {len(images)} cached images for {len(self.samples)} samples")
        self.images = images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        if self.images is not None:
            image = self.images[index]
        else:
            try:
                image = read_rgb(sample.path)
            except READ_ERRORS as err:
                raise UnreadableImageError(
                    f"could not read image '{sample.path}' (item {index}): {' '.join(str(err).split())}; remove or "
                    "replace the file, or set data.check_images=error (stop before any work, naming every "
                    "unreadable image) or data.check_images=skip (leave such images out)") from err
        if seed is None:
            return self.transform(image), sample.pid, sample.camid, index
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
            # The CPU generator alone (the transforms run on the CPU): 15 us an image, torch.manual_seed 150 us.
            torch.default_generator.manual_seed(seed)
            return self.transform(image), sample.pid, sample.camid, index


class SeededBatches(Sampler[list[tuple[int, int]]]):
    """A :class:`PKSampler` whose indices come with their augmentation seeds: ``[(index, seed), ...]``.

    The seed of the ``j``-th image of the ``b``-th batch of an epoch is drawn from
    ``(seed, rank, epoch, b)`` only. Augmentation is then a function of the epoch and
    nothing else: the same with 0 or N loader processes, persistent or not, and the same
    when a run resumed at epoch ``e`` starts its loader afresh, which per-process random
    streams cannot give (persistent workers keep their stream across epochs).
    """

    def __init__(self, batches: PKSampler, seed: int) -> None:
        self.batches, self.seed = batches, seed

    def set_epoch(self, epoch: int) -> None:
        """Reseed the identity shuffle and the augmentation of ``epoch``."""
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        key = [self.seed, self.batches.rank, self.batches.epoch]
        for b, batch in enumerate(self.batches):
            seeds = np.random.SeedSequence(key + [b]).generate_state(len(batch)).tolist()
            yield list(zip(batch, seeds))


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

    Each image's augmentation is seeded from ``(seed, rank, epoch, batch)`` (see
    :class:`SeededBatches`), so runs with the same seed augment identically for any
    number of ``workers``, and a resumed run repeats the uninterrupted one. ``images``: the
    samples' decoded images (see :class:`ImageDataset`).
    """
    sampler = PKSampler([s.pid for s in samples], p, k, seed=seed, num_replicas=num_replicas, rank=rank)
    return DataLoader(
        ImageDataset(samples, transform, images),
        batch_sampler=SeededBatches(sampler, seed),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
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
