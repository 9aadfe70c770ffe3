"""Feature extraction (flip averaging, mode restore), pairwise distances and evaluate() end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reid_prune.evaluation import evaluate, extract_features, features, pairwise_distance, rank_metrics


class ImageIdDataset(Dataset):
    """In-memory (image, pid, camid, index) samples, the layout the project's loaders yield."""

    def __init__(self, images: torch.Tensor, pids, camids) -> None:
        self.images, self.pids, self.camids = images, list(pids), list(camids)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.pids[index], self.camids[index], index


def tiny_model() -> nn.Module:
    # Asymmetric weights, so a horizontal flip changes the feature; BN to check that eval mode is used.
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 4, 5)
    )


def test_flip_averaging_equals_manual_average_and_modes_are_restored():
    model = tiny_model()
    model.train()
    model[1].eval()  # a submodule in its own mode must get it back
    images = torch.randn(5, 3, 6, 4)
    loader = DataLoader(ImageIdDataset(images, [3, 3, 7, 7, 0], [0, 1, 0, 2, 1]), batch_size=2)

    feats, pids, camids = extract_features(model, loader, flip=True, progress=False)

    assert model.training and not model[1].training and model[0].training
    with torch.no_grad():
        model.eval()
        expected = (model(images) + model(images.flip(-1))) / 2
        unflipped = model(images)
    assert feats.dtype == torch.float32 and feats.shape == (5, 5)
    torch.testing.assert_close(feats, expected)
    assert not torch.allclose(feats, unflipped)
    np.testing.assert_array_equal(pids, [3, 3, 7, 7, 0])
    np.testing.assert_array_equal(camids, [0, 1, 0, 2, 1])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pairwise_distance_equals_brute_force(monkeypatch, metric):
    monkeypatch.setattr(features, "_DISTANCE_CHUNK_ELEMENTS", 10)  # several blocks of query rows
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(7, 6)).astype(np.float32), rng.normal(size=(9, 6)).astype(np.float32)
    expected = np.empty((7, 9))
    for i, q in enumerate(qf.astype(np.float64)):
        for j, g in enumerate(gf.astype(np.float64)):
            if metric == "cosine":
                expected[i, j] = 1 - q @ g / (np.linalg.norm(q) * np.linalg.norm(g))
            else:
                expected[i, j] = np.linalg.norm(q - g)
    distances = pairwise_distance(torch.from_numpy(qf), gf, metric)
    assert distances.dtype == np.float32 and distances.shape == (7, 9)
    np.testing.assert_allclose(distances, expected, atol=1e-5)


def test_pairwise_distance_rejects_unknown_metric():
    with pytest.raises(ValueError, match="metric: expected one of"):
        pairwise_distance(np.ones((1, 2)), np.ones((1, 2)), "manhattan")


def test_evaluate_end_to_end():
    # Each identity is a fixed random pattern plus noise; a Flatten "model" retrieves by that pattern.
    generator = torch.Generator().manual_seed(0)
    patterns = torch.randn(4, 3, 4, 2, generator=generator)

    def split(pids, camids):
        images = patterns[torch.tensor(pids) - 1] + 0.3 * torch.randn(len(pids), 3, 4, 2, generator=generator)
        return DataLoader(ImageIdDataset(images, pids, camids), batch_size=3)

    query = split([1, 2, 3, 4], [0, 0, 1, 1])
    gallery = split([1, 1, 2, 2, 3, 3, 4, 4], [1, 0, 1, 2, 0, 2, 0, 1])
    model = nn.Flatten()

    result = evaluate(model, query, gallery, metric="euclidean", progress=False)

    qf, q_pids, q_camids = extract_features(model, query, progress=False)
    gf, g_pids, g_camids = extract_features(model, gallery, progress=False)
    expected = rank_metrics(torch.cdist(qf, gf).numpy(), q_pids, g_pids, q_camids, g_camids)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    np.testing.assert_allclose(result["cmc"], expected["cmc"])
    # Noise is small next to the pattern gaps: every query finds its identity first.
    assert result["rank1"] == 100.0 and result["num_valid_queries"] == 4
