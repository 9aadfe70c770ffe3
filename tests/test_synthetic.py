"""Synthetic dataset generator: layout, counts, determinism, atomic writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from reid_prune.cli import main
from reid_prune.data import build_dataset, generate_synthetic

TINY = dict(num_ids=4, num_test_ids=2, images_per_camera=2, num_cameras=2, num_distractors=1, height=32, width=16)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_parses_with_configured_counts(tmp_path):
    root = generate_synthetic(tmp_path / "syn", **TINY)
    assert root == tmp_path / "syn"
    dataset = build_dataset("market_layout", root)
    # train: 4 ids x 2 cameras x 2 images; query: one per test id per camera; gallery: the rest + distractor.
    assert (len(dataset.train), dataset.num_train_pids) == (16, 4)
    assert len(dataset.query) == 4 and {s.pid for s in dataset.query} == {5, 6}
    assert sorted(s.pid for s in dataset.gallery) == [0, 5, 5, 6, 6]
    for pid in (5, 6):
        assert sorted(s.camid for s in dataset.query if s.pid == pid) == [0, 1]
        assert sorted(s.camid for s in dataset.gallery if s.pid == pid) == [0, 1]
    names = [Path(s.path).name for s in dataset.train + dataset.query + dataset.gallery]
    assert all(re.fullmatch(r"\d{4}_c[12]s1_\d{6}_00\.png", name) for name in names)
    assert len(set(names)) == len(names)
    with Image.open(dataset.train[0].path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (16, 32))


def test_default_test_ids_are_half_the_train_ids(tmp_path):
    dataset = build_dataset(
        "market_layout", generate_synthetic(tmp_path / "syn", **{**TINY, "num_ids": 6, "num_test_ids": None})
    )
    assert len({s.pid for s in dataset.query}) == 3


def test_same_seed_same_bytes(tmp_path):
    first = _files(generate_synthetic(tmp_path / "a", seed=3, **TINY))
    assert first == _files(generate_synthetic(tmp_path / "b", seed=3, **TINY))
    assert first != _files(generate_synthetic(tmp_path / "c", seed=4, **TINY))


def test_overwrite_replaces_only_a_dataset_synth_wrote(tmp_path):
    from reid_prune.data.synthetic import MARKER

    root = tmp_path / "syn"
    root.mkdir()
    (root / "important.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="exists and is not empty; choose another folder, or pass --overwrite"):
        generate_synthetic(root, **TINY)
    # --overwrite must not delete a folder the tool did not write (issue 11: it deleted important.txt).
    with pytest.raises(FileExistsError, match=f"refusing to overwrite .*no {MARKER} marker"):
        generate_synthetic(root, overwrite=True, **TINY)
    assert sorted(p.name for p in root.iterdir()) == ["important.txt"]

    generated = generate_synthetic(tmp_path / "gen", seed=1, **TINY)
    assert json.loads((generated / MARKER).read_text())["seed"] == 1
    first = _files(generated)
    generate_synthetic(generated, overwrite=True, seed=2, **TINY)  # a dataset synth wrote: replaced
    assert _files(generated) != first and json.loads((generated / MARKER).read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen", "syn"]  # no leftover staging folders

    # A generated dataset with one foreign file in it is refused too, and kept whole.
    (generated / "query" / "notes.txt").write_text("mine")
    before = _files(generated)
    with pytest.raises(FileExistsError, match="it holds 'query/notes.txt'"):
        generate_synthetic(generated, overwrite=True, **TINY)
    assert _files(generated) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    generate_synthetic(empty, **TINY)  # an empty folder is fine without overwrite
    assert (empty / "query").is_dir()


def test_cli_synth_overwrite_refuses_foreign_folder_with_exit_2(tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "important.txt").write_text("user data")
    assert main(["synth", "--output", str(root), "--ids", "4", "--test-ids", "2", "--overwrite"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (root / "important.txt").read_text() == "user data"


def test_more_than_nine_cameras_parse(tmp_path):
    dataset = build_dataset("market_layout", generate_synthetic(tmp_path / "syn", **{**TINY, "num_cameras": 12}))
    assert {s.camid for s in dataset.train} == set(range(12))


def test_failure_leaves_no_partial_dataset(tmp_path, monkeypatch):
    original_save = Image.Image.save
    calls = []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return original_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        generate_synthetic(tmp_path / "syn", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="images_per_camera >= 2"):
        generate_synthetic(tmp_path / "x", **{**TINY, "images_per_camera": 1})
    with pytest.raises(ValueError, match="num_ids >= 2"):
        generate_synthetic(tmp_path / "x", **{**TINY, "num_ids": 1})
    assert not (tmp_path / "x").exists()


def test_cli_names_its_flags_in_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["synth", "--output", str(tmp_path / "x"), "--ids", "1"])
    assert info.value.code == 2
    assert "argument --ids: must be >= 2, got 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
