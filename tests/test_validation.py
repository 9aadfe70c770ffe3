"""The validation split (data.val_ids): how it is carved, and that no decision reads the test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_RUN
from reid_prune.config import load_config
from reid_prune.data import Sample, generate_synthetic
from reid_prune.data.datasets import ReIDDataset
from reid_prune.data.validation import carve_validation
from reid_prune.jobs.prune import prune_checkpoint
from reid_prune.jobs.train import train


def _dataset() -> ReIDDataset:
    # Identities 0..5 (relabelled train pids); identity p has 3 images in camera 0 and p % 2 + 1 in camera 1.
    train = [Sample(f"{p}_{c}_{i}.jpg", p, c) for p in range(6) for c, n in ((0, 3), (1, p % 2 + 1))
             for i in range(n)]
    return ReIDDataset("toy", train, [Sample("q.jpg", 9, 0)], [Sample("g.jpg", 9, 1)])


def test_carving_moves_whole_identities_into_a_query_per_camera_and_a_gallery():
    dataset = _dataset()
    carved = carve_validation(dataset, 2, seed=3)
    val = carved.val_query + carved.val_gallery
    val_pids = {s.pid for s in val}
    assert len(val_pids) == 2 and len(carved.train) + len(val) == len(dataset.train)
    assert {s.path for s in carved.train} | {s.path for s in val} == {s.path for s in dataset.train}
    # Whole identities move: no image of a validation identity stays in training.
    left = {s.path for s in dataset.train if s.pid not in val_pids}
    assert {s.path for s in carved.train} == left
    # One query per (identity, camera): each validation identity has images in both cameras here.
    assert sorted((s.pid, s.camid) for s in carved.val_query) == sorted((p, c) for p in val_pids for c in (0, 1))
    assert not {s.path for s in carved.val_query} & {s.path for s in carved.val_gallery}
    # The remaining training labels are 0..N-1 again; the test split is untouched.
    assert sorted({s.pid for s in carved.train}) == list(range(4))
    assert (carved.query, carved.gallery) == (dataset.query, dataset.gallery)
    # The same seed gives the same split; another seed draws other identities for some seed.
    assert carve_validation(dataset, 2, seed=3) == carved
    assert any({s.pid for s in carve_validation(dataset, 2, seed=s).val_query} != val_pids for s in range(10))


@pytest.mark.parametrize("num_ids", [0, 6, 7])
def test_carving_needs_identities_left_to_train_on(num_ids):
    with pytest.raises(ValueError, match=f"data.val_ids: expected between 1 and 5 .* got {num_ids}"):
        carve_validation(_dataset(), num_ids)


def _noisy_copy(root: Path, to: Path) -> Path:
    """``root`` with every test image (query and gallery) replaced by random noise of the same size and name."""
    shutil.copytree(root, to)
    rng = np.random.default_rng(0)
    for folder in ("query", "bounding_box_test"):
        for path in sorted((to / folder).iterdir()):
            size = Image.open(path).size
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return to


def _config(root: Path, *extra: str):
    return load_config(None, TINY_RUN + [
        "data.dataset=market_layout", f"data.root={root}", "data.name=same", "train.epochs=2", "train.eval_every=1",
        "train.warmup_epochs=0", "train.max_batches=2", "eval.latency=false", "data.cache=false", *extra])


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_noise_in_the_test_split_changes_no_decision(tmp_path, cache_at):
    """Issue 21, item 2: the same runs, once with the test images replaced by noise, decide the same.

    With a validation split, training (whose evaluations choose best.pt) and AFP+PRC (whose controller
    steers by mAP) make identical choices, down to the weights. Without one, the evaluations they read
    are of the test split, and they differ: the check can fail.
    """
    cache_at()
    generate_synthetic(tmp_path / "real", num_ids=12, num_test_ids=6, images_per_camera=2, seed=0)
    noisy = _noisy_copy(tmp_path / "real", tmp_path / "noisy")

    def metrics(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    runs = {}
    for name, root in (("real", tmp_path / "real"), ("noisy", noisy)):
        for val in (0, 4):
            out = tmp_path / f"{name}-val{val}"
            summary = train(_config(root, f"data.val_ids={val}"), output=out, progress=False)
            runs[name, val] = (out, summary)
    evaluated = {key: [(m["mAP"], m["rank1"]) for m in metrics(out)] for key, (out, _) in runs.items()}
    assert evaluated["real", 0] != evaluated["noisy", 0]  # without validation, training reads the test split
    assert evaluated["real", 4] == evaluated["noisy", 4]
    assert runs["real", 4][1]["best"] == runs["noisy", 4][1]["best"]
    assert _same_weights(runs["real", 4][0] / "best.pt", runs["noisy", 4][0] / "best.pt")
    assert runs["real", 4][1]["test"]["mAP"] != runs["noisy", 4][1]["test"]["mAP"]  # the test split is scored

    pruned = {}
    for name, root in (("real", tmp_path / "real"), ("noisy", noisy)):
        cfg = _config(root, "data.val_ids=4", "prune.method=afp_prc", "prune.rate=0.5", "prune.finetune_epochs=2",
                      "prune.options.tolerance=0.5", "prune.options.threshold=1.0")
        out = tmp_path / f"prune-{name}"
        report = prune_checkpoint(cfg, runs["real", 4][0] / "best.pt", output=out, progress=False)
        pruned[name] = (out, report)
    assert pruned["real"][1]["widths"] == pruned["noisy"][1]["widths"]
    assert _same_weights(pruned["real"][0] / "pruned.pt", pruned["noisy"][0] / "pruned.pt")
    assert pruned["real"][1]["finetuned"]["mAP"] != pruned["noisy"][1]["finetuned"]["mAP"]
