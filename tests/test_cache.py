"""The decoded-image cache: same pixels as decoding each time, same transform output, when auto caches."""

import numpy as np
import pytest
import torch
from PIL import Image

from reid_prune.data import ImageDataset, Sample, build_transforms, decode_images, should_cache
from reid_prune.data.cache import decoded_bytes


@pytest.fixture
def samples(tmp_path):
    """Five JPEGs of different sizes, none of them 32x16."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(5):
        path = tmp_path / f"{i:04d}_c1s1_000000_00.jpg"
        Image.fromarray(rng.integers(0, 256, (60 + 7 * i, 25 + 3 * i, 3), dtype=np.uint8)).save(path)
        out.append(Sample(str(path), i, 0))
    return out


def test_cached_pixels_are_the_decoded_and_resized_image(samples):
    images = decode_images(samples, 32, 16, batch_size=2)
    assert images.shape == (5, 3, 32, 16) and images.dtype == torch.uint8
    for sample, cached in zip(samples, images, strict=True):
        resized = Image.open(sample.path).convert("RGB").resize((16, 32), Image.BILINEAR, reducing_gap=None)
        expected = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
        # torchvision's antialiased tensor resize and PIL's bilinear agree within one grey level.
        assert (cached.int() - expected.int()).abs().max() <= 1


@pytest.mark.parametrize("train", [True, False])
def test_transform_output_is_bit_identical_with_the_cache(samples, train):
    transform = build_transforms(32, 16, train=train, random_erasing=0.5 if train else 0.0)
    from_files = ImageDataset(samples, transform)
    from_cache = ImageDataset(samples, transform, decode_images(samples, 32, 16))
    for index in range(len(samples)):
        torch.manual_seed(index)  # the same random flip, crop and erasing for both
        expected = from_files[index]
        torch.manual_seed(index)
        actual = from_cache[index]
        assert torch.equal(actual[0], expected[0]) and actual[1:] == expected[1:]
    assert from_cache.images[0].dtype == torch.uint8  # the cache itself is never changed by a transform


def test_mismatched_cache_is_refused(samples):
    with pytest.raises(ValueError, match="4 cached images for 5 samples"):
        ImageDataset(samples, build_transforms(32, 16, train=False), torch.zeros(4, 3, 32, 16, dtype=torch.uint8))


def test_unreadable_image_names_the_file(samples):
    open(samples[2].path, "wb").write(b"not a jpeg")
    with pytest.raises(ValueError, match=samples[2].path):
        decode_images(samples, 32, 16)


def test_auto_caches_what_fits_in_a_quarter_of_the_memory(monkeypatch):
    size = decoded_bytes(6242 + 400 + 1535, 128, 64)  # CUHK03 here: 201 MB
    assert size == 8177 * 3 * 128 * 64
    assert should_cache("auto", size, available=4 * size, processes=1)
    assert not should_cache("auto", size, available=4 * size - 1, processes=1)
    assert not should_cache("auto", size, available=4 * size, processes=2)  # each torchrun process holds a copy
    monkeypatch.setattr("reid_prune.data.cache.available_memory", lambda: None)
    assert not should_cache("auto", 1, processes=1)  # memory unknown: do not guess
    assert should_cache(True, size, available=0) and not should_cache(False, 0, available=10**12)
