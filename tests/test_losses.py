"""Losses against brute-force python loops over anchors, positives and negatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid_prune.losses import (
    ReIDLoss,
    batch_hard_triplet_loss,
    cross_entropy_label_smooth,
    pairwise_distances,
    random_triplets,
    triplet_loss,
)

P, K, D = 4, 3, 8
METRICS = ["euclidean", "cosine"]
MARGINS = [0.3, None]


def pk_batch(p: int = P, k: int = K, d: int = D, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(p * k, d, generator=generator)
    pids = torch.arange(p).repeat_interleave(k)
    return feats, pids


def brute_distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> float:
    a, b = a.double().tolist(), b.double().tolist()
    if metric == "euclidean":
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def brute_hinge(d_ap: float, d_an: float, margin: float | None) -> float:
    if margin is None:
        return math.log1p(math.exp(d_ap - d_an))
    return max(0.0, margin + d_ap - d_an)


def brute_batch_hard(feats, pids, margin, metric) -> float:
    pids = pids.tolist()
    terms = []
    for a in range(len(pids)):
        positives = [brute_distance(feats[a], feats[p], metric) for p in range(len(pids)) if p != a and pids[p] == pids[a]]
        negatives = [brute_distance(feats[a], feats[n], metric) for n in range(len(pids)) if pids[n] != pids[a]]
        if positives and negatives:
            terms.append(brute_hinge(max(positives), min(negatives), margin))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("metric", METRICS)
def test_pairwise_distances_match_brute_force(metric):
    feats, _ = pk_batch()
    dist = pairwise_distances(feats, metric)
    assert dist.shape == (P * K, P * K)
    for i in range(P * K):
        for j in range(P * K):
            expected = 0.0 if i == j else brute_distance(feats[i], feats[j], metric)
            assert dist[i, j].item() == pytest.approx(expected, abs=1e-5)


def test_euclidean_distance_is_stable_for_large_offset_features():
    # A large common offset would cancel all precision out of |a|^2 + |b|^2 - 2ab in float32.
    feats, _ = pk_batch()
    dist = pairwise_distances(feats + 100.0)
    assert torch.allclose(dist, pairwise_distances(feats), atol=1e-4)


def test_pairwise_distances_rejects_bad_input():
    with pytest.raises(ValueError, match="loss.metric"):
        pairwise_distances(torch.randn(4, 3), "manhattan")
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        pairwise_distances(torch.randn(4, 3, 2))


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("metric", METRICS)
def test_batch_hard_matches_brute_force(metric, margin):
    feats, pids = pk_batch()
    # Shuffle so identities are not contiguous in the batch.
    order = torch.randperm(len(pids), generator=torch.Generator().manual_seed(3))
    feats, pids = feats[order], pids[order]
    loss = batch_hard_triplet_loss(feats, pids, margin=margin, metric=metric)
    assert loss.item() == pytest.approx(brute_batch_hard(feats, pids, margin, metric), abs=1e-5)


@pytest.mark.parametrize("margin", MARGINS)
def test_batch_hard_leaves_out_anchors_without_positive(margin):
    feats, _ = pk_batch(p=1, k=7)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 3])  # identities 2 and 3 have a single image
    loss = batch_hard_triplet_loss(feats, pids, margin=margin)
    assert loss.item() == pytest.approx(brute_batch_hard(feats, pids, margin, "euclidean"), abs=1e-5)
    # The same loss as on the five anchors alone, with the singletons still serving as negatives.
    dist = pairwise_distances(feats)
    hardest = [(dist[a, [p for p in range(5) if p != a and pids[p] == pids[a]]].max(),
                dist[a, [n for n in range(7) if pids[n] != pids[a]]].min()) for a in range(5)]
    expected = sum(brute_hinge(ap.item(), an.item(), margin) for ap, an in hardest) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("margin", MARGINS)
def test_batch_hard_with_one_identity_is_zero_and_backward_works(margin):
    feats = torch.randn(6, D, requires_grad=True)
    loss = batch_hard_triplet_loss(feats, torch.zeros(6, dtype=torch.long), margin=margin)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))


@pytest.mark.parametrize("metric", METRICS)
def test_batch_hard_gradient_is_finite_with_identical_features(metric):
    feats, pids = pk_batch()
    feats[1] = feats[0]  # identical positive pair
    feats[K] = feats[0]  # identical negative pair
    feats.requires_grad_(True)
    batch_hard_triplet_loss(feats, pids, metric=metric).backward()
    assert torch.isfinite(feats.grad).all()
    assert feats.grad.abs().sum() > 0


def test_batch_hard_rejects_mismatched_pids():
    with pytest.raises(ValueError, match="pids"):
        batch_hard_triplet_loss(torch.randn(6, D), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("metric", METRICS)
def test_triplet_loss_matches_brute_force_over_all_triplets(metric, margin):
    feats, pids = pk_batch()
    triplets = [
        (a, p, n)
        for a in range(len(pids))
        for p in range(len(pids))
        for n in range(len(pids))
        if a != p and pids[a] == pids[p] and pids[n] != pids[a]
    ]
    expected = sum(
        brute_hinge(brute_distance(feats[a], feats[p], metric), brute_distance(feats[a], feats[n], metric), margin)
        for a, p, n in triplets
    ) / len(triplets)
    loss = triplet_loss(feats, torch.tensor(triplets), margin=margin, metric=metric)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_triplet_loss_hand_computed_case():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [1.0, 0.0]])
    triplets = torch.tensor([[0, 1, 2], [0, 2, 1], [0, 3, 2]])
    # d(0,1)=5, d(0,2)=10, d(0,3)=1: [1+5-10]_+=0, [1+10-5]_+=6, [1+1-10]_+=0.
    assert triplet_loss(feats, triplets, margin=1.0).item() == pytest.approx(2.0, abs=1e-5)


def test_triplet_loss_validates_triplets_and_handles_none():
    feats = torch.randn(4, D, requires_grad=True)
    with pytest.raises(ValueError, match=r"\(T, 3\)"):
        triplet_loss(feats, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="int64"):
        triplet_loss(feats, torch.zeros(2, 3, dtype=torch.int32))
    loss = triplet_loss(feats, torch.zeros(0, 3, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert feats.grad is not None


def test_random_triplets_are_valid():
    pids = torch.tensor([5, 5, 5, 9, 9, 2, 2, 2, 7])  # 7 has one image: no triplet for it as anchor
    triplets = random_triplets(pids, generator=torch.Generator().manual_seed(0))
    assert triplets.dtype == torch.long and triplets.shape == (8, 3)
    assert triplets[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    for a, p, n in triplets.tolist():
        assert a != p and pids[a] == pids[p] and pids[a] != pids[n]


def test_random_triplets_draw_every_positive_and_negative():
    _, pids = pk_batch()
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([random_triplets(pids, generator=generator) for _ in range(200)])
    assert set(draws[:, 0, 1].tolist()) == {1, 2}
    assert set(draws[:, 0, 2].tolist()) == set(range(K, P * K))


def test_random_triplets_are_deterministic_with_seeded_generator():
    _, pids = pk_batch(p=8, k=4)
    first = random_triplets(pids, generator=torch.Generator().manual_seed(42))
    again = random_triplets(pids, generator=torch.Generator().manual_seed(42))
    other = random_triplets(pids, generator=torch.Generator().manual_seed(43))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_random_triplets_single_identity_gives_none():
    assert random_triplets(torch.zeros(4, dtype=torch.long)).shape == (0, 3)


def brute_label_smooth_ce(logits, targets, epsilon) -> float:
    total = 0.0
    num_classes = logits.shape[1]
    for row, target in zip(logits.double().tolist(), targets.tolist()):
        log_norm = math.log(sum(math.exp(v) for v in row))
        for c, v in enumerate(row):
            q = (1 - epsilon) * (c == target) + epsilon / num_classes
            total -= q * (v - log_norm)
    return total / len(targets)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5])
def test_label_smooth_ce_matches_brute_force(epsilon):
    logits = torch.randn(6, 5)
    targets = torch.tensor([0, 4, 2, 2, 1, 3])
    loss = cross_entropy_label_smooth(logits, targets, epsilon)
    assert loss.item() == pytest.approx(brute_label_smooth_ce(logits, targets, epsilon), abs=1e-5)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, targets, label_smoothing=epsilon).item(), abs=1e-5)


def test_label_smooth_ce_without_smoothing_is_cross_entropy():
    logits = torch.randn(6, 5)
    targets = torch.tensor([0, 4, 2, 2, 1, 3])
    assert torch.allclose(cross_entropy_label_smooth(logits, targets, 0.0), F.cross_entropy(logits, targets))


def test_label_smooth_ce_rejects_bad_input():
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy_label_smooth(torch.randn(2, 3), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="targets"):
        cross_entropy_label_smooth(torch.randn(2, 3), torch.tensor([0, 1, 2]))


def test_reid_loss_weights_combine_parts():
    feats, pids = pk_batch()
    logits = torch.randn(P * K, P)
    criterion = ReIDLoss(triplet_weight=0.7, id_weight=2.0, margin=0.5, metric="cosine", label_smoothing=0.2)
    total, parts = criterion(feats, logits, pids)
    triplet = batch_hard_triplet_loss(feats, pids, margin=0.5, metric="cosine").item()
    identity = cross_entropy_label_smooth(logits, pids, 0.2).item()
    assert parts == pytest.approx({"triplet": triplet, "id": identity})
    assert isinstance(parts["triplet"], float) and isinstance(parts["id"], float)
    assert total.item() == pytest.approx(0.7 * triplet + 2.0 * identity, abs=1e-5)


def test_reid_loss_soft_margin_and_id_only():
    feats, pids = pk_batch()
    total, parts = ReIDLoss(soft_margin=True)(feats, None, pids)
    assert total.item() == pytest.approx(batch_hard_triplet_loss(feats, pids, margin=None).item(), abs=1e-6)
    assert parts["id"] == 0.0
    logits = torch.randn(P * K, P)
    total, parts = ReIDLoss(triplet="none", id_weight=1.0)(feats, logits, pids)
    assert parts["triplet"] == 0.0
    assert total.item() == pytest.approx(cross_entropy_label_smooth(logits, pids).item(), abs=1e-6)


def test_reid_loss_random_miner_is_reproducible_with_manual_seed():
    feats, pids = pk_batch()
    criterion = ReIDLoss(triplet="random", margin=1.0)
    torch.manual_seed(7)
    first = [criterion(feats, None, pids)[0].item() for _ in range(3)]
    torch.manual_seed(7)
    again = [criterion(feats, None, pids)[0].item() for _ in range(3)]
    assert first == again
    assert len(set(first)) > 1  # a fresh draw each step


def test_reid_loss_backward_reaches_features_and_logits():
    feats, pids = pk_batch()
    feats.requires_grad_(True)
    logits = torch.randn(P * K, P, requires_grad=True)
    total, _ = ReIDLoss(id_weight=1.0)(feats, logits, pids)
    total.backward()
    assert feats.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0


def test_reid_loss_id_weight_without_logits_raises():
    feats, pids = pk_batch()
    with pytest.raises(ValueError, match="needs a classifier: set model num_classes"):
        ReIDLoss(id_weight=1.0)(feats, None, pids)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"triplet": "semi_hard"}, "loss.triplet"),
        ({"metric": "l1"}, "loss.metric"),
        ({"triplet_weight": -1.0}, "loss.triplet_weight"),
        ({"id_weight": -0.5}, "loss.id_weight"),
        ({"triplet_weight": 0.0, "id_weight": 0.0}, "nothing to train"),
        ({"triplet": "none"}, "nothing to train"),
        ({"margin": -0.1}, "loss.margin"),
        ({"label_smoothing": 1.5}, "loss.label_smoothing"),
    ],
)
def test_reid_loss_rejects_bad_settings(kwargs, key):
    with pytest.raises(ValueError, match=key):
        ReIDLoss(**kwargs)
