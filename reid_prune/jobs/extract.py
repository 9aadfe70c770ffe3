"""Deployment on a user's own images: L2-normalised features of a folder or list of images.

``reid-prune extract --checkpoint CKPT --images DIR_OR_LIST --output feats.npy`` writes

* ``feats.npy``: (N, D) float32, one L2-normalised feature per readable image, so the
  cosine similarity of two images is the dot product of their rows;
* ``feats.paths.txt``: the N image paths, one per line, in the same order.

Unreadable images (corrupt, truncated, missing from a list) are skipped with a
warning naming each one; they never stop the run. Both files are written
atomically. Images are preprocessed as in evaluation: resized to the model's
input size and normalised with the mean and std of the checkpoint's config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..data.datasets import IMAGE_EXTENSIONS
from ..data.images import READ_ERRORS, read_rgb
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from ..evaluation import extract_features
from ..outputs import atomic_path, check_output_file
from ..precision import ComputeSettings
from ..runtime import resolve_device

log = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (256, 128)


def paths_file_for(output: str | os.PathLike) -> Path:
    """The sidecar of a features file: ``feats.npy`` -> ``feats.paths.txt``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.paths.txt")


def folder_images(folder: Path) -> list[str]:
    """Image files under ``folder``, sorted, symbolic links followed; one warning line per kind of link.

    A link to a folder is followed (its images are listed under the link's path) unless it leads
    back to a folder it lies in, which would list images forever; a broken link is skipped. Each
    kind is counted in one warning with an example, so none is left out without a word.
    """
    found, followed, loops, broken = [], [], [], []
    chains = {str(folder): {os.path.realpath(folder)}}  # each folder walked: the real folders above it, itself too
    for root, dirs, files in os.walk(folder, followlinks=True):
        chain = chains.pop(root)
        kept = []
        for name in sorted(dirs):
            path = os.path.join(root, name)
            real = os.path.realpath(path)
            if real in chain:
                loops.append(path)
                continue
            if os.path.islink(path):
                followed.append(path)
            chains[path] = chain | {real}
            kept.append(name)
        dirs[:] = kept
        for name in files:
            path = os.path.join(root, name)
            if not os.path.exists(path):  # a link whose target is gone: os.walk lists it with the files
                broken.append(path)
            elif Path(name).suffix.lower() in IMAGE_EXTENSIONS and os.path.isfile(path):
                found.append(path)
    for paths, what in ((followed, "followed {links} to a folder; {its} images are included"),
                        (loops, "skipped {links} leading back to a folder above (a loop)"),
                        (broken, "skipped {links} whose target is missing")):
        if paths:
            one = len(paths) == 1
            links = "1 symbolic link" if one else f"{len(paths)} symbolic links"
            log.warning("--images: %s (%s'%s' -> '%s')", what.format(links=links, its="its" if one else "their"),
                        "" if one else "e.g. ", paths[0], os.readlink(paths[0]))
    return sorted(found)


def list_images(source: str | os.PathLike) -> list[str]:
    """Image paths from a folder (searched recursively, sorted; :func:`folder_images`) or a text file with one
    path per line.

    In a list file, blank lines are ignored and relative paths are relative to the
    list file's folder. Listed paths are not checked here: a missing one is skipped
    with a warning at extraction time, like any unreadable image.
    """
    source = Path(source)
    if source.is_dir():
        paths = folder_images(source)
        if not paths:
            raise ValueError(f"--images: folder '{source}' holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
        return paths
    if source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        paths = [line if Path(line).is_absolute() else str(source.parent / line) for line in lines if line]
        if not paths:
            raise ValueError(f"--images: list file '{source}' names no images; expected one path per line")
        return paths
    raise FileNotFoundError(f"--images: '{source}' is neither a folder of images nor a list file")


def checkpoint_preprocessing(ckpt: dict[str, Any]) -> tuple[tuple[int, int], list[float], list[float]]:
    """(input size (H, W), mean, std) from the config stored in a checkpoint; 256x128 and ImageNet's otherwise."""
    data = (ckpt.get("config") or {}).get("data", {})
    size = (int(data["height"]), int(data["width"])) if "height" in data and "width" in data else DEFAULT_INPUT_SIZE
    transforms = data.get("transforms", {})
    return size, list(transforms.get("mean", IMAGENET_MEAN)), list(transforms.get("std", IMAGENET_STD))


class ImageFiles(Dataset):
    """Items ``(image (3, H, W) | None, index, error)``: an unreadable image gives None and the reason."""

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str]:
        try:
            image = read_rgb(self.paths[index])
        except READ_ERRORS as err:  # missing, truncated or not an image
            return None, index, f"{type(err).__name__}: {err}"
        return self.transform(image), index, ""


def _collate_readable(items: list[tuple[Tensor | None, int, str]]):
    """Stack the readable images; pass the failures on as (index, reason)."""
    images = [image for image, _, _ in items if image is not None]
    indices = torch.tensor([index for image, index, _ in items if image is not None], dtype=torch.long)
    failures = [(index, error) for image, index, error in items if image is None]
    return (torch.stack(images) if images else None), indices, failures


class _ReadableBatches:
    """A loader's readable images as ``(images, index, index, index)``, the batches extract_features reads.

    Each unreadable image is logged as a warning, by path, and recorded in ``skipped``.
    """

    def __init__(self, loader: DataLoader, paths: Sequence[str]) -> None:
        self.loader, self.paths = loader, paths
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, indices, failures in self.loader:
            for index, reason in failures:
                log.warning("skipped unreadable image '%s' (%s)", self.paths[index], reason)
                self.skipped.append((self.paths[index], reason))
            if images is not None:
                yield images, indices, indices, indices


def image_features(
    model: nn.Module,
    paths: Sequence[str],
    *,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 64,
    flip: bool = False,
    device: str | torch.device = "cpu",
    amp: str | bool = "off",
    channels_last: str | bool = False,
    workers: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """L2-normalised features of the readable images among ``paths``.

    Args:
        model: maps (B, 3, H, W) images to (B, D) features; moved to ``device``.
        paths: image files.
        input_size: (H, W) the images are resized to.
        mean, std: normalisation after scaling pixels to [0, 1].
        batch_size: images per forward pass.
        flip: average each image's feature with its mirror image's before normalising.
        device: where the model runs.
        amp, channels_last: precision and memory format, as ``train.amp`` and ``train.channels_last``
            (see :mod:`reid_prune.precision`); features are float32 either way.
        workers: DataLoader processes decoding images.
        progress: show a progress bar (:func:`~reid_prune.progress.progress_bar`).

    Returns:
        ``(features (N, D) float32, kept paths (N,), skipped [(path, reason)])``, rows in ``paths`` order.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    transform = build_transforms(input_size[0], input_size[1], train=False, mean=mean, std=std)
    loader = DataLoader(ImageFiles(paths, transform), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_collate_readable)
    batches = _ReadableBatches(loader, paths)
    compute = ComputeSettings.resolve(device, amp, channels_last)
    model = compute.place(model)
    try:
        features, indices, _ = extract_features(model, batches, device=compute.device, flip=flip,
                                                precision=compute.precision, channels_last=compute.channels_last,
                                                progress=progress)
    except ValueError:
        if len(batches.skipped) == len(paths):
            raise ValueError(f"none of the {len(paths)} images could be read (see the warnings above)") from None
        raise
    kept = [paths[i] for i in indices.tolist()]
    return F.normalize(features, dim=1).numpy().astype(np.float32), kept, batches.skipped


def extract_checkpoint(
    checkpoint: str | os.PathLike,
    images: str | os.PathLike,
    output: str | os.PathLike,
    *,
    batch_size: int = 64,
    input_size: tuple[int, int] | None = None,
    flip: bool = False,
    device: str = "auto",
    amp: str | bool = "auto",
    channels_last: str | bool = "auto",
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the features of ``images`` (a folder or list file) under ``checkpoint``'s model to ``output`` (.npy).

    The paths go to :func:`paths_file_for` ``(output)``. ``input_size`` defaults to the
    checkpoint's training size (its stored config), else 256x128. ``amp`` and ``channels_last``
    are resolved for the device as ``train.amp`` and ``train.channels_last`` are (``auto``:
    bf16 and channels-last on a CPU with native bf16); the checkpoint's own training
    setting is not used, since the machine that extracts is not the one that trained.

    Returns ``{"output", "paths_file", "num_images", "dim", "input_size", "precision", "memory_format",
    "skipped": [(path, reason)]}``.
    """
    output = Path(output)
    if output.suffix != ".npy":
        raise ValueError(f"--output: features are written as a .npy file; got '{output}' (e.g. use feats.npy)")
    check_output_file(output, "--output", inputs=[checkpoint])
    check_output_file(paths_file_for(output), "--output (its paths file)", inputs=[checkpoint])
    device = resolve_device(device, option="--device")
    paths = list_images(images)
    ckpt = read_checkpoint(checkpoint)
    stored_size, mean, std = checkpoint_preprocessing(ckpt)
    size = tuple(input_size) if input_size is not None else stored_size
    compute = ComputeSettings.resolve(device, amp, channels_last)
    model = model_from_checkpoint(ckpt).eval()
    features, kept, skipped = image_features(model, paths, input_size=size, mean=mean, std=std,
                                             batch_size=batch_size, flip=flip, device=compute.device,
                                             amp=compute.precision, channels_last=compute.channels_last,
                                             workers=workers, progress=progress)
    paths_file = paths_file_for(output)
    with atomic_path(paths_file) as tmp:
        tmp.write_text("".join(f"{p}\n" for p in kept))
    with atomic_path(output) as tmp, open(tmp, "wb") as fh:
        np.save(fh, features)  # a file object: np.save would append .npy to a path
    return {"output": str(output), "paths_file": str(paths_file), "num_images": len(kept), "dim": features.shape[1],
            "input_size": size, "precision": compute.precision, "memory_format": compute.memory_format_name,
            "skipped": skipped}
