"""``data.check_images: off`` with the decoded-image cache: an unreadable image stops the run with one line, exit 2.

Nothing decodes the images up front under ``off``, so the cache's decoding is the first to
meet a bad file; it must say which, and how to get past it, as the up-front check does.
"""

from __future__ import annotations

import pytest

from conftest import REPO
from reid_prune.cli import main
from reid_prune.data import build_dataset, decode_images
from test_images import _dataset_with_bad_images


@pytest.mark.parametrize("workers", [0, 2])
def test_caching_names_every_unreadable_image_and_the_fix(tmp_path, workers):
    root, bad = _dataset_with_bad_images(tmp_path)  # a truncated gallery image and an empty train image
    dataset = build_dataset("market_layout", root)
    samples = dataset.train + dataset.gallery
    with pytest.raises(ValueError) as info:
        decode_images(samples, 32, 16, workers=workers, batch_size=4)
    message = str(info.value)
    assert message.startswith("2 images cannot be read while caching the decoded images (data.cache)")
    assert all(f"'{path}'" in message for path in bad) and "data.check_images=skip" in message
    assert "\n" not in message and "Traceback" not in message  # a worker's traceback is not the message
    good = [s for s in samples if s.path not in bad]
    assert decode_images(good, 32, 16, workers=workers).shape == (len(good), 3, 32, 16)


def test_train_with_check_images_off_and_the_cache_exits_2_before_writing(tmp_path, capsys):
    """Issue 25, item 9: it crashed with an OSError traceback."""
    root, bad = _dataset_with_bad_images(tmp_path)
    out = tmp_path / "run"
    overrides = ["data.dataset=market_layout", f"data.root={root}", "data.height=32", "data.width=16", "data.p=2",
                 "data.k=2", "data.workers=0", "data.check_images=off", "data.cache=true", "model.arch=resnet18",
                 "train.epochs=1", "train.device=cpu", "eval.latency=false"]
    assert main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--output", str(out),
                 *[f"--set={o}" for o in overrides]]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reid-prune train: error: ")
    # The training split is decoded first (its loader is built first): its empty image is named.
    empty = [path for path in bad if "bounding_box_train" in path]
    assert f"1 image cannot be read while caching the decoded images (data.cache): '{empty[0]}'" in err
    assert "data.check_images=skip" in err and "Traceback" not in err
    assert not out.exists()
