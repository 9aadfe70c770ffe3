"""`reid-prune extract`: L2-normalised features of a folder or list, paths sidecar, unreadable images skipped."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reid_prune import build_model, load_model, save_checkpoint
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.data import build_transforms
from reid_prune.jobs.extract import list_images
from reid_prune.precision import resolve_precision


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ResNet-18 checkpoint whose stored config says 64x32 inputs."""
    path = tmp_path_factory.mktemp("extract") / "model.pt"
    torch.manual_seed(0)
    model = build_model("resnet18", embedding_dim=32)
    with torch.no_grad():  # non-trivial BNNeck statistics, so eval mode matters
        model.neck.running_mean.uniform_(-1, 1)
    save_checkpoint(path, model, config=load_config(None, ["data.height=64", "data.width=32"]).to_dict())
    return path


def _images(folder: Path) -> list[Path]:
    """Three readable images of different sizes (one in a subfolder), a corrupt one and a text file."""
    rng = np.random.default_rng(0)
    paths = [folder / "a.png", folder / "sub" / "b.jpg", folder / "c.bmp"]
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + 10 * i, 20 + 5 * i, 3), dtype=np.uint8)).save(path)
    (folder / "sub" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image\n")
    return paths


def _expected(model, paths, *, flip=False) -> np.ndarray:
    """The model's L2-normalised output, one image at a time."""
    transform = build_transforms(64, 32, train=False)
    rows = []
    with torch.no_grad():
        for path in paths:
            x = transform(Image.open(path).convert("RGB"))[None]
            feat = model(x) + (model(x.flip(-1)) if flip else 0)
            rows.append(F.normalize(feat, dim=1)[0].numpy())
    return np.stack(rows)


def test_folder_features_sidecar_and_corrupt_image(checkpoint, tmp_path, caplog):
    paths = _images(tmp_path / "imgs")
    out = tmp_path / "out" / "feats.npy"
    with caplog.at_level(logging.WARNING, logger="reid_prune.jobs.extract"):
        code = main(["extract", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "imgs"),
                     "--output", str(out), "--batch-size", "2", "--workers", "0", "--amp", "off", "--quiet"])
    assert code == 0
    feats = np.load(out)
    assert feats.dtype == np.float32 and feats.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)
    listed = (tmp_path / "out" / "feats.paths.txt").read_text().splitlines()
    assert listed == sorted(str(p) for p in paths)
    order = [paths.index(Path(p)) for p in listed]
    np.testing.assert_allclose(feats, _expected(load_model(checkpoint), [paths[i] for i in order]), atol=1e-5)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(tmp_path / "imgs" / "sub" / "corrupt.jpg") in warnings[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["feats.npy", "feats.paths.txt"]


def test_list_file_keeps_its_order_skips_missing_and_flips(checkpoint, tmp_path, caplog):
    paths = _images(tmp_path / "imgs")
    listing = tmp_path / "imgs" / "list.txt"
    listing.write_text(f"c.bmp\n\n{paths[0]}\nmissing.png\nsub/b.jpg\n")  # relative to the list's folder
    out = tmp_path / "feats.npy"
    with caplog.at_level(logging.WARNING, logger="reid_prune.jobs.extract"):
        assert main(["extract", "--checkpoint", str(checkpoint), "--images", str(listing), "--output", str(out),
                     "--flip", "--workers", "0", "--amp", "off", "--quiet"]) == 0
    expected_paths = [paths[2], paths[0], paths[1]]
    assert (tmp_path / "feats.paths.txt").read_text().splitlines() == [str(p) for p in expected_paths]
    np.testing.assert_allclose(np.load(out), _expected(load_model(checkpoint), expected_paths, flip=True), atol=1e-5)
    assert any("missing.png" in r.getMessage() for r in caplog.records)


def test_default_precision_is_auto_and_close_to_fp32(checkpoint, tmp_path, capsys):
    """Without --amp, extract runs in what auto picks on this CPU; bf16 features stay within 0.999 cosine of fp32."""
    paths = _images(tmp_path / "imgs")
    out = tmp_path / "feats.npy"
    assert main(["extract", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "imgs"), "--output", str(out),
                 "--workers", "0", "--quiet"]) == 0
    precision = resolve_precision("auto", "cpu")
    assert f"computed in {precision}, channels_last" in capsys.readouterr().out
    expected = _expected(load_model(checkpoint), sorted(paths))
    if precision == "fp32":
        np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    else:  # both are L2-normalised: the row-wise dot product is the cosine
        assert (np.load(out) * expected).sum(axis=1).min() >= 0.999


def test_listing_and_user_errors(checkpoint, tmp_path, capsys):
    paths = _images(tmp_path / "imgs")
    corrupt = tmp_path / "imgs" / "sub" / "corrupt.jpg"  # listed by extension; skipped only when read
    assert list_images(tmp_path / "imgs") == sorted(str(p) for p in [*paths, corrupt])
    (tmp_path / "empty").mkdir()
    args = ["extract", "--checkpoint", str(checkpoint), "--workers", "0", "--quiet"]
    assert main([*args, "--images", str(tmp_path / "empty"), "--output", str(tmp_path / "f.npy")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main([*args, "--images", str(tmp_path / "imgs"), "--output", str(tmp_path / "f.txt")]) == 2
    assert "written as a .npy file" in capsys.readouterr().err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"nope")
    assert main([*args, "--images", str(only_bad), "--output", str(tmp_path / "f.npy")]) == 2
    assert "none of the 1 images could be read" in capsys.readouterr().err
    assert main([*args, "--images", str(tmp_path / "imgs"), "--output", str(tmp_path / "f.npy"), "--amp", "fp16",
                 "--device", "cpu"]) == 2
    assert "fp16 autocast (train.amp / --amp) runs on CUDA only" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.paths.txt").exists()
