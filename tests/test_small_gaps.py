"""Issue 25's small gaps: nothing is ignored, clamped or defaulted without a word.

sensitivity's default MACs target is named as such; eval (and every job that loads a checkpoint
against a config) refuses model keys the checkpoint contradicts; extract follows symbolic links
to folders and says so, and names the links it skips; visrank says when --topk is clamped.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_RUN
from reid_prune.cli import main
from reid_prune.data import Sample
from reid_prune.evaluation import visualize_ranked
from reid_prune.jobs.extract import list_images

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "demo.yaml")
SET = [f"--set={o}" for o in TINY_RUN + ["eval.latency_batch_sizes=[1]"]]


@pytest.fixture
def run(tiny_run, cache_at):
    """The session's tiny run (ROOT/run/best.pt: ResNet-18, bnneck, no embedding layer, avg pooling, last stride 1)."""
    cache_at(tiny_run / "cache")
    return tiny_run / "run"


def test_sensitivity_names_the_default_target_it_could_not_meet(run, tmp_path, capsys):
    out = tmp_path / "sens"
    code = main(["sensitivity", "--config", CONFIG, "--quiet", "--checkpoint", str(run / "best.pt"), *SET,
                 "--method", "haoli", "--scope", "internal", "--rates", "0.1", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and "Traceback" not in err
    assert "no MACs target was given (--target-macs, prune.target_macs)" in err and "the default 0.5" in err
    kept = float(re.search(r"keeps (\d\.\d{4}) of its MACs", err).group(1))
    least = float(re.search(r"give --target-macs ([\d.]+) or more", err).group(1))
    # Pruning a tenth of the channels inside the blocks keeps far more than half the MACs; the target
    # suggested is the kept fraction rounded up to 3 decimals, so that it can be met.
    assert kept > 0.5 and least == math.ceil(kept * 1000) / 1000


def test_sensitivity_with_a_target_given_does_not_call_it_the_default(run, tmp_path, capsys):
    code = main(["sensitivity", "--config", CONFIG, "--quiet", "--checkpoint", str(run / "best.pt"), *SET,
                 "--method", "haoli", "--rates", "0.1", "--target-macs", "0.2", "--output", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be met" in err and "default" not in err


@pytest.mark.parametrize("key, value, stored", [("neck", "none", "bnneck"), ("embedding_dim", "64", "0"),
                                                ("pooling", "gem", "avg"), ("last_stride", "2", "1")])
def test_eval_refuses_model_keys_the_checkpoint_contradicts(run, capsys, key, value, stored):
    code = main(["eval", "--config", CONFIG, "--quiet", "--checkpoint", str(run / "best.pt"), *SET,
                 f"--set=model.{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2, "the config's model key was ignored: the checkpoint's own was evaluated"
    assert (f"holds a resnet18 with {key} {stored} but the config's model.{key} is {value}; pass the matching "
            f"config or --set model.{key}={stored}") in err


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), (120, 30, 60)).save(path)
    return path


def test_extract_follows_folder_links_and_names_every_link_it_skips(tmp_path, caplog):
    source, elsewhere = tmp_path / "crops", tmp_path / "elsewhere"
    own = _image(source / "cam1" / "a.png")
    linked = [_image(elsewhere / "b.jpg"), _image(elsewhere / "deeper" / "c.png")]
    (source / "cam2").symlink_to(elsewhere, target_is_directory=True)  # a folder kept elsewhere, linked in
    (source / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")  # a broken link
    (source / "cam1" / "up").symlink_to("..", target_is_directory=True)  # a loop: back to crops/
    with caplog.at_level(logging.WARNING, logger="reid_prune.jobs.extract"):
        paths = list_images(source)
    assert paths == sorted([str(own), str(source / "cam2" / "b.jpg"), str(source / "cam2" / "deeper" / "c.png")])
    assert all(os.path.samefile(p, q) for p, q in zip(paths[1:], linked))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"--images: followed 1 symbolic link to a folder; its images are included ('{source / 'cam2'}' -> "
        f"'{elsewhere}')",
        f"--images: skipped 1 symbolic link leading back to a folder above (a loop) ('{source / 'cam1' / 'up'}' -> "
        "'..')",
        f"--images: skipped 1 symbolic link whose target is missing ('{source / 'gone.jpg'}' -> "
        f"'{tmp_path / 'deleted.jpg'}')",
    ]


def test_visrank_says_when_topk_is_more_than_the_gallery_ranks(tmp_path):
    query = [Sample(str(_image(tmp_path / "q.png")), 1, 0)]
    # Four gallery images; the one of the query's identity from the query's camera is left out: 3 can be ranked.
    ids = [(1, 0), (1, 1), (2, 0), (3, 1)]
    gallery = [Sample(str(_image(tmp_path / f"g{i}.png")), pid, cam) for i, (pid, cam) in enumerate(ids)]
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    with pytest.warns(UserWarning, match=r"--topk 10: the gallery ranks at most 3 images .* drawing 3 per query"):
        drawn = visualize_ranked(distmat, query, gallery, tmp_path / "out", topk=10, tile_size=(32, 16))
    assert [m.gallery_index for m in drawn[0].matches] == [1, 2, 3]


def test_a_small_sensitivity_target_is_echoed_as_given():
    from reid_prune.analysis.allocation import check_budget

    with pytest.raises(ValueError, match=r"a MACs budget of 0\.0001 cannot be met: .* keeps 0\.0123 of its MACs"):
        check_budget({"g": 1}, lambda widths: 0.01234, 0.0001)
