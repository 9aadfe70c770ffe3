"""Reading image files as 8-bit RGB, whatever their mode or bit depth, and checking a dataset's images up front.

Pillow opens files in many modes. ``Image.convert("RGB")`` is right for the 8-bit ones
(``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``LA``, ``PA``, ``CMYK``, ``YCbCr``, ``LAB``,
...; alpha is dropped, the stored colour kept) but it *clips* the others at 255, so a
16-bit greyscale PNG would turn almost white. Those are scaled here instead:

* ``I;16`` / ``I;16B`` / ``I;16L`` (16-bit PNG, TIFF) and ``I`` (16-bit PGM, 32-bit TIFF):
  values in 0..65535 map to 0..255 (v / 257, rounded); a value outside that range is
  an error, as its scale is unknown;
* ``F`` (32-bit float TIFF): values in [0, 1] map to 0..255 (v x 255, rounded); values
  outside [0, 1] are an error for the same reason.

:func:`read_rgb` is what the training and evaluation loaders and ``extract`` read with,
so :func:`unreadable_images`, which runs it once on every file, checks exactly what
training will later read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from .datasets import ReIDDataset, without_paths

# Errors Pillow raises for missing, truncated, foreign or undecodable files.
READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError, SyntaxError)


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image`` (see the module docstring for the high-bit-depth modes).

    Raises:
        ValueError: an ``I`` or ``F`` image whose values lie outside the range its mode implies.
    """
    mode = image.mode
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"mode {mode} image has values in {values.min()}..{values.max()}, outside the "
                             "16-bit range 0..65535; save it as an 8- or 16-bit image")
        grey = np.rint(values / 257.0)
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ValueError("mode F (floating-point) image has values outside [0, 1]; "
                             "save it as an 8- or 16-bit image")
        grey = np.rint(values * 255.0)
    else:
        return image.convert("RGB")
    return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode the image file at ``path`` completely and return it as 8-bit RGB.

    Raises:
        OSError: the file is missing, truncated or not an image Pillow can decode.
        ValueError: its pixel values do not fit its mode (see :func:`to_rgb`).
    """
    with Image.open(path) as file:
        file.load()  # decodes every byte: a truncated file fails here, not halfway through training
        return to_rgb(file)


def _read_error(path: str) -> str | None:
    try:
        read_rgb(path)
    except READ_ERRORS as err:
        return read_error(err)
    return None


def unreadable_images(paths: Sequence[str], *, threads: int = 1) -> list[tuple[str, str]]:
    """Decode every image once; return the ones that fail as ``[(path, reason)]``, in ``paths`` order.

    About half a millisecond per 128x64 JPEG on one CPU core; ``threads`` decode in
    parallel (Pillow releases the GIL while decoding).
    """
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            errors = list(pool.map(_read_error, paths))
    else:
        errors = [_read_error(p) for p in paths]
    return [(path, error) for path, error in zip(paths, errors) if error is not None]


def describe_unreadable(bad: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """(``"2 images"``, the first three as ``'path' (reason)`` and how many more) for a message on one line."""
    listing = "; ".join(f"'{path}' ({reason})" for path, reason in bad[:3])
    listing += f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{len(bad)} image{'s' if len(bad) > 1 else ''}", listing


def read_error(error: BaseException) -> str:
    """A read error as one line: ``OSError: cannot identify image file ...``."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def check_dataset_images(dataset: ReIDDataset, policy: str, *, threads: int = 1) -> ReIDDataset:
    """Apply the ``data.check_images`` policy to every image of ``dataset``.

    Args:
        dataset: a parsed dataset.
        policy: ``error`` (raise, naming the unreadable files), ``skip`` (warn and return the
            dataset without them, train pids relabelled) or ``off`` (return ``dataset`` unchecked).
        threads: decoding threads.

    Raises:
        ValueError: an image cannot be read under ``error``, or ``skip`` leaves a split empty.
    """
    if policy == "off":
        return dataset
    paths = list(dict.fromkeys(s.path for s in dataset.train + dataset.query + dataset.gallery))
    bad = unreadable_images(paths, threads=threads)
    if not bad:
        return dataset
    count, listing = describe_unreadable(bad)
    if policy == "error":
        raise ValueError(f"dataset {dataset.name}: {count} cannot be read: {listing}. Replace or remove "
                         f"{'them' if len(bad) > 1 else 'it'}, or set data.check_images=skip to leave unreadable "
                         "images out")
    warnings.warn(f"dataset {dataset.name}: left out {count} that cannot be read (data.check_images=skip): {listing}",
                  UserWarning, stacklevel=2)
    return without_paths(dataset, {path for path, _ in bad})
