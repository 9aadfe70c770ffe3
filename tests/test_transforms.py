"""Train / eval transforms: output shape and dtype, determinism, switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reid_prune.data import build_transforms


@pytest.fixture
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 30, 3), dtype=np.uint8))


@pytest.mark.parametrize("train", [True, False])
def test_output_is_normalised_float_tensor(image, train):
    out = build_transforms(32, 16, train=train)(image)
    assert type(out) is torch.Tensor
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32


def test_eval_resizes_and_normalises_only(image):
    transform = build_transforms(32, 16, train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = transform(image)
    assert torch.equal(out, transform(image))
    resized = np.asarray(image.resize((16, 32), Image.BILINEAR), dtype=np.float32) / 255
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - 0.5) / 0.25
    # Tensor and PIL bilinear resizing differ by rounding only.
    assert (out - expected).abs().mean() < 0.05


def test_train_augmentations_can_be_disabled(image):
    plain = build_transforms(32, 16, train=False)(image)
    torch.manual_seed(0)
    no_aug = build_transforms(32, 16, train=True, flip_prob=0, pad=0, random_erasing=0)
    assert torch.equal(no_aug(image), plain)

    flip = build_transforms(32, 16, train=True, flip_prob=1.0, pad=0, random_erasing=0)
    assert torch.equal(flip(image), plain.flip(-1))

    erase = build_transforms(32, 16, train=True, flip_prob=0, pad=0, random_erasing=1.0)
    erased = erase(image)
    changed = erased != plain
    assert changed.any() and (erased[changed] == 0).all()  # erased pixels hold the mean (0 after normalising)


def test_pad_crop_shifts_content(image):
    torch.manual_seed(0)
    crop = build_transforms(32, 16, train=True, flip_prob=0, pad=4, random_erasing=0)
    outputs = [crop(image) for _ in range(8)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="probabilities"):
        build_transforms(32, 16, train=True, flip_prob=1.5)
    with pytest.raises(ValueError, match="pad must be >= 0"):
        build_transforms(32, 16, train=True, pad=-1)
