"""Images decode to the right 8-bit RGB pixels in every mode Pillow hands us, and unreadable ones are found up front.

Expected pixels are computed here with numpy from the values written, not by Pillow's conversions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_prune.cli import main
from reid_prune.data import ImageDataset, Sample, build_dataset, generate_synthetic

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
H, W = 4, 6


def _read(path: Path) -> np.ndarray:
    """What the training loader hands the transforms, as an (H, W, 3) uint8 array."""
    image, _, _, _ = ImageDataset([Sample(str(path), 1, 0)], np.asarray)[0]
    assert image.dtype == np.uint8 and image.shape[2] == 3
    return image.astype(np.int64)


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.int64)[..., None], 3, axis=2)


def _srgb(linear: np.ndarray) -> np.ndarray:
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.rint(255 * encoded)


def _case_8bit(tmp_path: Path, mode: str, ext: str):
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    path = tmp_path / f"img_{mode}.{ext}"
    if mode == "1":
        bits = grey > 127
        Image.fromarray(bits).save(path)
        return path, _grey(bits * 255)
    if mode == "L":
        Image.fromarray(grey, "L").save(path)
        return path, _grey(grey)
    if mode in ("P", "PA", "P+transparency"):
        palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
        image = Image.fromarray(grey, "L").convert("P")
        image.putpalette(palette.tobytes())
        if mode == "PA":
            image = Image.merge("PA", (image, Image.fromarray(alpha, "L")))
            image.putpalette(palette.tobytes())
        elif mode == "P+transparency":
            image.info["transparency"] = int(grey[0, 0])
        image.save(path)
        return path, palette[grey].astype(np.int64)  # the stored colour; alpha is dropped
    if mode in ("RGB", "RGBA"):
        Image.fromarray(np.dstack([rgb, alpha]) if mode == "RGBA" else rgb, mode).save(path)
        return path, rgb.astype(np.int64)
    if mode == "LA":
        Image.fromarray(np.dstack([grey, alpha]), "LA").save(path)
        return path, _grey(grey)
    if mode == "CMYK":
        cmyk = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
        Image.fromarray(cmyk, "CMYK").save(path)
        c, k = cmyk[..., :3].astype(np.int64), cmyk[..., 3:].astype(np.int64)
        return path, np.rint((255 - c) * (255 - k) / 255)
    if mode == "YCbCr":
        ycc = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(ycc, "YCbCr").save(path)
        y, cb, cr = (ycc[..., i].astype(np.float64) for i in range(3))
        expected = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                             y + 1.772 * (cb - 128)], axis=-1)  # JFIF
        return path, np.clip(np.rint(expected), 0, 255)
    if mode == "LAB":
        # Neutral colours (a* = b* = 0, stored as signed bytes as in TIFF CIELab): R = G = B = sRGB(Y),
        # Y from L* (byte x 100 / 255) by the CIE formula.
        lightness = np.linspace(30, 255, H * W).astype(np.uint8).reshape(H, W)
        lab = np.dstack([lightness, np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)])
        Image.fromarray(lab, "LAB").save(path)
        y = ((lightness.astype(np.float64) * 100 / 255 + 16) / 116) ** 3
        return path, _grey(_srgb(y))
    raise AssertionError(mode)


# (mode, file type): every mode Pillow opens from the file types the dataset and extract read.
EIGHT_BIT = [("1", "png"), ("1", "bmp"), ("L", "png"), ("L", "bmp"), ("P", "png"), ("P", "bmp"),
             ("P+transparency", "png"), ("PA", "tif"), ("RGB", "png"), ("RGBA", "png"), ("RGBA", "tif"),
             ("LA", "png"), ("CMYK", "tif"), ("YCbCr", "tif"), ("LAB", "tif")]


@pytest.mark.parametrize("mode, ext", EIGHT_BIT, ids=[f"{m}-{e}" for m, e in EIGHT_BIT])
def test_eight_bit_modes_decode_to_the_right_rgb(tmp_path, mode, ext):
    path, expected = _case_8bit(tmp_path, mode, ext)
    with Image.open(path) as image:
        assert image.mode == mode.split("+")[0]  # the file really is in that mode
    # Exact, except the colour-space conversions whose reference formulas round differently by one.
    tolerance = 1 if mode in ("CMYK", "YCbCr", "LAB") else 0
    assert np.abs(_read(path) - expected).max() <= tolerance


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """Issue 11: Pillow's convert("RGB") clips 16-bit values at 255, so 16-bit greyscale turned white."""
    values = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    expected = _grey(np.rint(values / 257))  # 65535 / 257 = 255
    cases = {"png": "I;16", "tif": "I;16"}
    for ext, mode in cases.items():
        path = tmp_path / f"g16.{ext}"
        Image.fromarray(values).save(path)
        with Image.open(path) as image:
            assert image.mode == mode
        assert (_read(path) == expected).all(), ext
    big_endian = tmp_path / "g16b.tif"
    Image.frombytes("I;16B", (4, 2), values.astype(">u2").tobytes()).save(big_endian)
    with Image.open(big_endian) as image:
        assert image.mode == "I;16B"
    assert (_read(big_endian) == expected).all()
    pgm = tmp_path / "g16.pgm"  # a 16-bit PGM opens as mode I
    pgm.write_bytes(b"P5\n4 2\n65535\n" + values.astype(">u2").tobytes())
    with Image.open(pgm) as image:
        assert image.mode == "I"
    assert (_read(pgm) == expected).all()
    rgb48 = np.dstack([values, values[::-1], values[:, ::-1]])
    ppm = tmp_path / "rgb48.ppm"  # 16-bit colour: Pillow keeps the high byte
    ppm.write_bytes(b"P6\n4 2\n65535\n" + rgb48.astype(">u2").tobytes())
    assert np.abs(_read(ppm) - np.rint(rgb48 / 257)).max() <= 1


def test_float_images_in_zero_one_scale_to_255(tmp_path):
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values, "F").save(path)
    assert (_read(path) == _grey(np.rint(values * 255))).all()


@pytest.mark.parametrize("mode, values", [("F", np.array([[0.0, 200.0]], np.float32)),
                                          ("I", np.array([[0, 70000]], np.int32))])
def test_values_outside_the_mode_range_are_refused_not_guessed(tmp_path, mode, values):
    path = tmp_path / f"bad_{mode}.tif"
    Image.fromarray(values, mode).save(path)
    with pytest.raises(OSError, match=f"could not read image .*mode {mode}"):
        _read(path)


def _dataset_with_bad_images(tmp_path: Path) -> tuple[Path, list[str]]:
    root = generate_synthetic(tmp_path / "data", num_ids=4, num_test_ids=2, images_per_camera=2, num_cameras=2,
                              num_distractors=0, height=32, width=16)
    dataset = build_dataset("market_layout", root)
    truncated, empty = Path(dataset.gallery[0].path), Path(dataset.train[0].path)
    truncated.write_bytes(truncated.read_bytes()[:200])
    empty.write_bytes(b"")
    return root, sorted([str(truncated), str(empty)])


def test_unreadable_images_are_found_up_front_and_named(tmp_path):
    from reid_prune.data import check_dataset_images

    root, bad = _dataset_with_bad_images(tmp_path)
    dataset = build_dataset("market_layout", root)
    with pytest.raises(ValueError) as info:
        check_dataset_images(dataset, "error")
    message = str(info.value)
    assert "2 images cannot be read" in message and "data.check_images=skip" in message
    assert all(f"'{path}'" in message for path in bad)
    assert check_dataset_images(dataset, "off") is dataset


def test_skip_leaves_unreadable_images_out_and_relabels(tmp_path):
    from reid_prune.data import check_dataset_images

    root, bad = _dataset_with_bad_images(tmp_path)
    dataset = build_dataset("market_layout", root)
    # Also lose every training image of the first identity: labels must stay 0..N-1.
    first = [s.path for s in dataset.train if s.pid == 0]
    for path in first:
        Path(path).write_bytes(b"")
    with pytest.warns(UserWarning, match=f"left out {len(set(bad) | set(first))} images that cannot be read"):
        kept = check_dataset_images(dataset, "skip", threads=2)
    gone = set(bad) | set(first)
    assert [s.path for s in kept.train] == [s.path for s in dataset.train if s.path not in gone]
    assert [s.path for s in kept.gallery] == [s.path for s in dataset.gallery if s.path not in gone]
    assert kept.query == dataset.query
    assert sorted({s.pid for s in kept.train}) == list(range(dataset.num_train_pids - 1))
    assert kept.num_train_pids == dataset.num_train_pids - 1


def test_train_with_an_unreadable_image_exits_2_before_writing(tmp_path, capsys):
    """Issue 11: a 0-byte or truncated image crashed training with a traceback and left config.yaml behind."""
    root, bad = _dataset_with_bad_images(tmp_path)
    out = tmp_path / "run"
    overrides = ["data.dataset=market_layout", f"data.root={root}", "data.height=32", "data.width=16", "data.p=2",
                 "data.k=2", "data.workers=0", "model.arch=resnet18", "train.epochs=1", "train.device=cpu",
                 "eval.latency=false"]
    assert main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--output", str(out),
                 *[f"--set={o}" for o in overrides]]) == 2
    err = capsys.readouterr().err
    assert "2 images cannot be read" in err and all(path in err for path in bad) and "Traceback" not in err
    assert not out.exists()
