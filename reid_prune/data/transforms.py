"""Image transforms for re-ID training and evaluation (torchvision.transforms.v2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def decode_steps(height: int, width: int) -> list[Callable]:
    """The deterministic head of every transform: a uint8 (3, height, width) image tensor from a PIL image.

    :mod:`reid_prune.data.cache` stores exactly this output; the rest of a transform then
    runs on it unchanged (``ToImage`` wraps a tensor, ``Resize`` to its own size returns it).
    """
    return [v2.ToImage(), v2.Resize((height, width), interpolation=v2.InterpolationMode.BILINEAR)]


def build_transforms(
    height: int,
    width: int,
    *,
    train: bool,
    flip_prob: float = 0.5,
    pad: int = 10,
    random_erasing: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """Transform a PIL RGB image (or its cached uint8 tensor) into a normalised float tensor (3, height, width).

    Training adds, in order: horizontal flip with probability ``flip_prob``,
    zero padding by ``pad`` pixels then a random crop back to size, and random
    erasing with probability ``random_erasing`` (erased pixels are 0 after
    normalisation, i.e. the mean colour). Setting any of them to 0 disables
    it. Evaluation only resizes and normalises, so it is deterministic.
    """
    if height < 1 or width < 1:
        raise ValueError(f"data.height and data.width must be >= 1, got {height}x{width}")
    if not 0.0 <= flip_prob <= 1.0 or not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"flip_prob and random_erasing are probabilities in [0, 1], got {flip_prob}, {random_erasing}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0 pixels, got {pad}")
    steps = decode_steps(height, width)
    if train and flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(flip_prob))
    if train and pad > 0:
        steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if train and random_erasing > 0:
        steps.append(v2.RandomErasing(random_erasing, value=0))
    steps.append(v2.ToPureTensor())  # a plain torch.Tensor, not a tv_tensors.Image
    return v2.Compose(steps)
