"""An in-memory cache of decoded images: each image is read, decoded and resized once.

Every epoch of a training run (and every evaluation) otherwise opens each JPEG again,
decodes it and resizes it to the model's input, which is the same result every time.
:func:`decode_images` does it once and keeps the (N, 3, H, W) uint8 tensor; the loaders
then run only the random (training) or normalising steps of the transform on it, on
tensors (``torchvision.transforms.v2``), with bit-identical output. The cache costs
3 x H x W bytes per image: 24 KiB at 128x64, 96 KiB at 256x128.

``data.cache: auto`` caches when the dataset's images take at most a quarter of the
memory available (divided among the processes torchrun starts on the machine), so that
small datasets (CUHK03, Market-1501 at 128x64) are cached and large ones are not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .datasets import Sample
from .images import describe_unreadable, read_error
from .loaders import ImageDataset
from .transforms import decode_steps

# auto caches when the decoded images take at most this share of the available memory.
AUTO_CACHE_SHARE = 0.25


def decoded_bytes(num_images: int, height: int, width: int) -> int:
    """Memory taken by ``num_images`` cached images of (3, height, width) uint8."""
    return num_images * 3 * height * width


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def should_cache(setting: bool | str, num_bytes: int, *, available: int | None = None,
                 processes: int | None = None) -> bool:
    """Whether ``data.cache`` (``auto``, true, false) means caching ``num_bytes`` of decoded images.

    ``auto``: yes when ``num_bytes`` x ``processes`` (default: torchrun's ``LOCAL_WORLD_SIZE``,
    each process keeps its own copy) is at most :data:`AUTO_CACHE_SHARE` of ``available``
    memory (default: :func:`available_memory`); no when the available memory is unknown.
    """
    if setting != "auto":
        return bool(setting)
    available = available_memory() if available is None else available
    processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return available is not None and num_bytes * processes <= AUTO_CACHE_SHARE * available


class _Decoding(Dataset):
    """The rows of :func:`decode_images`: ``(image, index, "")``, or ``(zeros, index, reason)`` for an unreadable file.

    Errors travel as values, not exceptions: a DataLoader process re-raises an exception with the
    worker's whole traceback in its message, and the decoding should name every bad file, not the first.
    """

    def __init__(self, samples: Sequence[Sample], height: int, width: int) -> None:
        self.images = ImageDataset(samples, v2.Compose([*decode_steps(height, width), v2.ToPureTensor()]))
        self.shape = (3, height, width)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int, str]:
        try:
            return self.images[index][0], index, ""
        except OSError as err:  # ImageDataset's, around the reader's own error
            return torch.zeros(self.shape, dtype=torch.uint8), index, read_error(err.__cause__ or err)


def decode_images(samples: Sequence[Sample], height: int, width: int, *, workers: int = 0,
                  batch_size: int = 64) -> Tensor:
    """Every sample's image decoded and resized to (height, width): a (N, 3, height, width) uint8 tensor.

    The decoding runs in ``workers`` DataLoader processes.

    Raises:
        ValueError: images that cannot be read (with ``data.check_images: off`` nothing looked at them
            before); the message names them and the fix.
    """
    images = torch.empty((len(samples), 3, height, width), dtype=torch.uint8)
    loader = DataLoader(_Decoding(samples, height, width), batch_size=batch_size, num_workers=workers)
    bad = []
    for batch, index, errors in loader:
        images[index] = batch
        bad += [(samples[i].path, error) for i, error in zip(index.tolist(), errors, strict=True) if error]
    if bad:
        count, listing = describe_unreadable(bad)
        raise ValueError(f"{count} cannot be read while caching the decoded images (data.cache): {listing}. "
                         f"Replace or remove {'them' if len(bad) > 1 else 'it'}, or set data.check_images=skip to "
                         "leave unreadable images out (data.check_images=off checks nothing up front)")
    return images
