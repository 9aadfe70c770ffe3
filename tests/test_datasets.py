"""Dataset parsers on generated folder trees, plus exact counts on the shared real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_data
from PIL import Image

from reid_prune.evaluation import rank_metrics
from reid_prune.data import (
    DATASET_KINDS,
    ImageDataset,
    PKSampler,
    Sample,
    build_dataset,
    build_eval_loader,
    build_train_loader,
    build_transforms,
)

MARKET_TREE = {
    "bounding_box_train": [
        "0007_c2s1_000100_01.jpg",
        "0002_c1s1_000451_03.jpg",
        "0002_c3s1_000551_01.JPG",  # extension case must not matter
        "0007_c6s2_000200_02.png",
        "-1_c1s1_000001_00.jpg",  # junk
        "0000_c1s1_000002_00.jpg",  # distractor: not an identity to train on
        "0003_c1s1_000003_00.bmp",
        "Thumbs.db",
        "notes.txt",
    ],
    "query": ["0010_c1s1_000010_00.jpg", "0011_c4s1_000011_00.jpeg", "0000_c2s1_000012_00.jpg"],
    "bounding_box_test": [
        "0010_c2s1_000020_01.jpg",
        "0011_c1s1_000021_01.jpg",
        "0000_c3s1_000022_01.jpg",
        "-1_c5s1_000023_01.jpg",
        "Thumbs.db",
    ],
}


def _make_tree(root: Path, tree: dict[str, list[str]]) -> Path:
    for folder, names in tree.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(b"")  # parsing reads names only
    return root


def _names(samples) -> list[str]:
    return [Path(s.path).name for s in samples]


def test_market1501_relabels_drops_junk_and_keeps_distractors_in_gallery(tmp_path):
    dataset = build_dataset("market1501", _make_tree(tmp_path / "market", MARKET_TREE))
    assert dataset.name == "market1501"
    # Sorted by path; original pids 2, 3, 7 become 0, 1, 2; cameras are 0-based.
    assert [(Path(s.path).name, s.pid, s.camid) for s in dataset.train] == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c3s1_000551_01.JPG", 0, 2),
        ("0003_c1s1_000003_00.bmp", 1, 0),
        ("0007_c2s1_000100_01.jpg", 2, 1),
        ("0007_c6s2_000200_02.png", 2, 5),
    ]
    assert dataset.num_train_pids == 3
    assert [(s.pid, s.camid) for s in dataset.query] == [(10, 0), (11, 3)]
    assert [(Path(s.path).name, s.pid, s.camid) for s in dataset.gallery] == [
        ("0000_c3s1_000022_01.jpg", 0, 2),
        ("0010_c2s1_000020_01.jpg", 10, 1),
        ("0011_c1s1_000021_01.jpg", 11, 0),
    ]


def test_summary_counts_each_split(tmp_path):
    summary = build_dataset("market1501", _make_tree(tmp_path / "m", MARKET_TREE)).summary()
    rows = {line.split("|")[0].strip(): [int(c) for c in line.split("|")[1:]] for line in summary.splitlines()[3:6]}
    assert rows == {"train": [5, 3, 4], "query": [2, 2, 2], "gallery": [3, 2, 3]}
    assert "1 distractor" in summary


def test_verbose_prints_summary(tmp_path, capsys):
    dataset = build_dataset("dukemtmc", _make_tree(tmp_path / "duke", MARKET_TREE), verbose=True)
    assert capsys.readouterr().out.strip() == dataset.summary()
    assert dataset.name == "dukemtmc"


def test_duke_names_parse(tmp_path):
    tree = {
        "bounding_box_train": ["0005_c2_f0046182.jpg", "0001_c8_f0000001.jpg"],
        "query": ["0009_c1_f0000002.jpg"],
        "bounding_box_test": ["0009_c3_f0000003.jpg"],
    }
    dataset = build_dataset("dukemtmc", _make_tree(tmp_path / "duke", tree))
    assert [(s.pid, s.camid) for s in dataset.train] == [(0, 7), (1, 1)]
    assert [(s.pid, s.camid) for s in dataset.gallery] == [(9, 2)]


def test_cuhk03np_reads_the_chosen_variant(tmp_path):
    root = tmp_path / "cuhk03-np"
    detected = {
        "bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png"],
        "query": ["0002_c1_1.png"],
        "bounding_box_test": ["0002_c2_7.png"],
    }
    labeled = {**detected, "bounding_box_train": ["0004_c1_1.png", "0005_c2_6.png", "0005_c1_2.png"]}
    _make_tree(root / "detected", detected)
    _make_tree(root / "labeled", labeled)

    default = build_dataset("cuhk03np", root)
    assert default.name == "cuhk03np-detected"
    assert _names(default.train) == ["0001_c1_1.png", "0001_c2_6.png"]
    assert Path(default.train[0].path).parent.parent.name == "detected"

    chosen = build_dataset("cuhk03np", root, cuhk03_variant="labeled", name="cuhk03")
    assert chosen.name == "cuhk03"
    assert [(s.pid, s.camid) for s in chosen.train] == [(0, 0), (1, 0), (1, 1)]


def test_market_layout_name_defaults_to_folder(tmp_path):
    root = _make_tree(tmp_path / "my_cameras", MARKET_TREE)
    assert build_dataset("market_layout", root).name == "my_cameras"
    assert build_dataset("market_layout", str(root), name="site-A").name == "site-A"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"expected one of \['market1501', 'dukemtmc', 'cuhk03np', 'market_layout'\]"):
        build_dataset("market", tmp_path)
    assert DATASET_KINDS == ("market1501", "dukemtmc", "cuhk03np", "market_layout")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("market1501", tmp_path / "absent")
    with pytest.raises(ValueError, match="cuhk03_variant.*'detected', 'labeled'.*'labelled'"):
        build_dataset("cuhk03np", tmp_path, cuhk03_variant="labelled")

    partial = tmp_path / "partial"
    (partial / "bounding_box_train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("market1501", partial)
    message = str(err.value)
    assert str(partial) in message
    assert "has no query, bounding_box_test" in message
    assert "expected bounding_box_train, query, bounding_box_test" in message

    with pytest.raises(FileNotFoundError, match="has no labeled; a CUHK03-NP root holds detected and labeled"):
        build_dataset("cuhk03np", partial, cuhk03_variant="labeled")


def test_split_without_parseable_images_names_pattern_and_example(tmp_path):
    tree = {**MARKET_TREE, "query": ["img001.jpg", "0000_c1s1_000001_00.jpg", "Thumbs.db"]}
    with pytest.raises(ValueError) as err:
        build_dataset("market1501", _make_tree(tmp_path / "m", tree))
    message = str(err.value)
    assert "query" in message and "'img001.jpg'" in message
    assert "([-\\\\d]+)_c(\\\\d+)" in message  # the regex, as repr shows it
    assert "e.g. '0002_c1s1_000451_03.jpg'" in message


def test_image_dataset_and_loaders_read_pngs(tmp_path):
    root = tmp_path / "pngs"
    rng = np.random.default_rng(0)
    for folder, names in {
        "bounding_box_train": ["0001_c1s1_000001_00.png", "0002_c2s1_000002_00.png"],
        "query": ["0003_c1s1_000003_00.png"],
        "bounding_box_test": ["0003_c2s1_000004_00.png", "0000_c1s1_000005_00.png", "0004_c2s1_000006_00.png"],
    }.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (20, 10), dtype=np.uint8), mode="L").save(root / folder / name)
    dataset = build_dataset("market_layout", root)
    transform = build_transforms(16, 8, train=False)

    image, pid, camid, index = ImageDataset(dataset.train, transform)[1]
    assert image.shape == (3, 16, 8) and image.dtype == torch.float32  # greyscale converted to RGB
    assert (pid, camid, index) == (1, 1, 1)

    loader = build_train_loader(dataset.train, transform, p=2, k=3, seed=0, workers=0)
    assert isinstance(loader.batch_sampler.batches, PKSampler) and not loader.persistent_workers
    (images, pids, camids, indices) = next(iter(loader))
    assert images.shape == (6, 3, 16, 8)
    assert sorted(pids.tolist()) == [0, 0, 0, 1, 1, 1]  # one image per identity, drawn 3 times
    assert all(pid == dataset.train[i].pid for pid, i in zip(pids.tolist(), indices.tolist(), strict=True))
    assert build_train_loader(dataset.train, transform, p=2, k=1, seed=0, workers=1).persistent_workers

    batches = list(build_eval_loader(dataset.gallery, transform, batch_size=2, workers=0))
    assert [b[0].shape[0] for b in batches] == [2, 1]  # ordered, last batch kept
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 3, 4]
    assert torch.cat([b[3] for b in batches]).tolist() == [0, 1, 2]


def test_camera_ids_of_two_digits_count_in_the_metrics(tmp_path):
    """Issue 11: c12 was read as camera 1, so a cross-camera match was dropped as a same-camera one."""
    gallery = {"0005_c12s1_001351_02.jpg": 0.1, "0006_c2s1_000002_00.jpg": 0.2, "0007_c3s1_000003_00.jpg": 0.3,
               "0005_c2s1_000004_00.jpg": 0.4}
    tree = {"bounding_box_train": ["0001_c1s1_000001_00.jpg", "0002_c10s1_000002_00.jpg"],
            "query": ["0005_c1s1_000001_00.jpg"], "bounding_box_test": list(gallery)}
    dataset = build_dataset("market_layout", _make_tree(tmp_path / "m", tree))
    assert [s.camid for s in dataset.train] == [0, 9]
    assert {Path(s.path).name: s.camid for s in dataset.gallery}["0005_c12s1_001351_02.jpg"] == 11
    distances = np.array([[gallery[Path(s.path).name] for s in dataset.gallery]])
    query, gallery = dataset.query, dataset.gallery
    metrics = rank_metrics(distances, np.array([s.pid for s in query]), np.array([s.pid for s in gallery]),
                           np.array([s.camid for s in query]), np.array([s.camid for s in gallery]))
    # Both true matches are on other cameras, at ranks 1 and 4: AP = (1/1 + 2/4) / 2.
    assert metrics["mAP"] == pytest.approx(100 * (1 / 1 + 2 / 4) / 2)


def test_names_that_do_not_match_are_counted_in_a_warning_per_split(tmp_path):
    tree = {**MARKET_TREE, "bounding_box_train": MARKET_TREE["bounding_box_train"] + ["img001.jpg", "IMG_2.png"],
            "query": MARKET_TREE["query"] + ["person.jpg"]}
    with pytest.warns(UserWarning) as record:
        dataset = build_dataset("market1501", _make_tree(tmp_path / "m", tree))
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert "bounding_box_train: left out 2 images whose names do not match" in messages[0]
    assert "e.g. 'IMG_2.png'" in messages[0]
    assert "query: left out 1 image whose names do not match" in messages[1] and "'person.jpg'" in messages[1]
    assert len(dataset.train) == 5 and len(dataset.query) == 2  # the others are still read


def test_unreadable_image_error_names_the_file(tmp_path):
    broken = tmp_path / "0001_c1s1_000001_00.png"
    broken.write_bytes(b"not a png")
    dataset = ImageDataset([Sample(str(broken), 1, 0)], build_transforms(16, 8, train=False))
    with pytest.raises(OSError, match="could not read image '.*0001_c1s1_000001_00.png'"):
        dataset[0]


def test_mini_market1501_exact_counts():
    dataset = build_dataset("market1501", shared_data("mini_market1501"))
    # The fixture has no junk (-1) or distractor (0) files: every image is kept.
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (32, 32, 32)
    assert dataset.num_train_pids == 16
    assert sorted({s.pid for s in dataset.train}) == list(range(16))
    assert len({s.pid for s in dataset.query}) == len({s.pid for s in dataset.gallery}) == 16
    assert {s.pid for s in dataset.query} == {s.pid for s in dataset.gallery}
    assert {s.camid for s in dataset.train + dataset.query + dataset.gallery} <= set(range(6))
    assert [s.path for s in dataset.train] == sorted(s.path for s in dataset.train)


def test_cuhk03_market_exact_counts():
    dataset = build_dataset("market_layout", shared_data("cuhk03_market"), name="cuhk03")
    assert (len(dataset.train), dataset.num_train_pids) == (6242, 643)
    assert (len(dataset.query), len(dataset.gallery)) == (400, 1535)
    test_pids = {s.pid for s in dataset.query}
    assert len(test_pids) == 200 and {s.pid for s in dataset.gallery} == test_pids
    assert {s.camid for s in dataset.train + dataset.query + dataset.gallery} == {0, 1}


def test_every_format_the_reader_decodes_is_a_dataset_image(tmp_path):
    tree = {"bounding_box_train": ["0001_c1s1_000001_00.tif", "0001_c2s1_000002_00.tiff", "0002_c1s1_000003_00.pgm",
                                   "0002_c2s1_000004_00.ppm", "0003_c1s1_000005_00.webp", "0003_c2s1_000006_00.jpg"],
            "query": ["0004_c1s1_000007_00.tif"], "bounding_box_test": ["0004_c2s1_000008_00.webp"]}
    dataset = build_dataset("market_layout", _make_tree(tmp_path / "d", tree))
    assert sorted(_names(dataset.train)) == sorted(tree["bounding_box_train"])
    assert _names(dataset.query) == tree["query"] and _names(dataset.gallery) == tree["bounding_box_test"]
