"""Market-1501 rank metrics: hand-computed cases and the vectorised path against the per-query loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid_prune.evaluation import metrics
from reid_prune.evaluation.metrics import rank_metrics, rank_metrics_loop

BOTH = pytest.mark.parametrize("fn", [rank_metrics, rank_metrics_loop], ids=["vectorised", "loop"])


def one_query_case():
    """Query (pid 1, cam 0); gallery sorted by distance: (1,c0), (2,c1), (1,c1), (3,c1), (1,c2)."""
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    return distmat, np.array([1]), np.array([1, 2, 1, 3, 1]), np.array([0]), np.array([0, 1, 1, 1, 2])


@BOTH
def test_required_case_ap_modes_and_cmc(fn):
    # (1,c0) is removed (same pid, same camera); the kept list (2,c1), (1,c1), (3,c1), (1,c2)
    # has hits at 0-based ranks 1 and 3.
    result = fn(*one_query_case(), ap="torchreid", max_rank=4)
    assert result["mAP"] == pytest.approx(50.0)  # (1/2 + 2/4) / 2
    np.testing.assert_allclose(result["cmc"], [0, 1, 1, 1])
    assert result["rank1"] == 0.0 and result["rank5"] == 100.0
    assert result["num_valid_queries"] == 1 and result["num_skipped_queries"] == 0

    official = fn(*one_query_case(), ap="official", max_rank=4)
    # Trapezoids: hit 1 at rank 1: (0/1 + 1/2)/2 * 1/2 = 1/8; hit 2 at rank 3: (1/3 + 2/4)/2 * 1/2 = 5/24.
    assert official["mAP"] == pytest.approx(100 / 3)
    np.testing.assert_allclose(official["cmc"], [0, 1, 1, 1])


@BOTH
def test_query_without_valid_match_is_skipped_and_counted(fn):
    # Query 1 (pid 5, cam 0) has its only gallery image in its own camera, so it is skipped.
    distmat = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    result = fn(distmat, [1, 5], [1, 2, 5], [0, 0], [1, 1, 0], max_rank=3)
    assert result["num_valid_queries"] == 1 and result["num_skipped_queries"] == 1
    assert result["mAP"] == pytest.approx(100.0)  # only query 0 counts: its match is first
    np.testing.assert_allclose(result["cmc"], [1, 1, 1])


@BOTH
def test_all_queries_skipped_is_an_error(fn):
    with pytest.raises(ValueError, match="no query has a true match"):
        fn(np.zeros((1, 2)), [1], [1, 2], [0], [0, 1])


@BOTH
def test_pid0_distractors_are_non_matches(fn):
    # Two distractors (pid 0) from another camera rank first; the match is third.
    distmat = np.array([[0.1, 0.2, 0.3]])
    result = fn(distmat, [4], [0, 0, 4], [0], [1, 2, 1], max_rank=3)
    assert result["mAP"] == pytest.approx(100 / 3)
    np.testing.assert_allclose(result["cmc"], [0, 0, 1])


@BOTH
def test_minp_hand_case(fn):
    # Gallery (pid, cam): (1,c1), (2,c1), (2,c1), (1,c1), in that order for both queries.
    # Query pid 1: hits at ranks 0 and 3 -> INP 2/4. Query pid 2: hits at ranks 1 and 2 -> INP 2/3.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    result = fn(distmat, [1, 2], [1, 2, 2, 1], [0, 0], [1, 1, 1, 1], max_rank=4)
    assert result["mINP"] == pytest.approx(100 * (2 / 4 + 2 / 3) / 2)
    assert result["mAP"] == pytest.approx(100 * ((1 + 2 / 4) / 2 + (1 / 2 + 2 / 3) / 2) / 2)
    assert result["rank1"] == pytest.approx(50.0)


@BOTH
def test_ties_are_broken_by_gallery_order(fn):
    # Match and non-match at the same distance: the one earlier in the gallery ranks first.
    match_first = fn(np.array([[0.5, 0.5]]), [1], [1, 2], [0], [1, 1], max_rank=2)
    match_second = fn(np.array([[0.5, 0.5]]), [1], [2, 1], [0], [1, 1], max_rank=2)
    np.testing.assert_allclose(match_first["cmc"], [1, 1])
    np.testing.assert_allclose(match_second["cmc"], [0, 1])
    assert match_second["mAP"] == pytest.approx(50.0)


@pytest.mark.parametrize("ap", ["torchreid", "official"])
@pytest.mark.parametrize("integer_distances", [False, True], ids=["random", "many-ties"])
def test_vectorised_equals_loop_on_random_cases(monkeypatch, ap, integer_distances):
    # A tiny chunk size makes the vectorised path cross many chunk boundaries.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 64)
    rng = np.random.default_rng(0)
    for _ in range(20):
        num_q, num_g = int(rng.integers(1, 25)), int(rng.integers(5, 60))
        if integer_distances:
            distmat = rng.integers(0, 4, (num_q, num_g)).astype(np.float64)
        else:
            distmat = rng.random((num_q, num_g), dtype=np.float32)
        q_pids, g_pids = rng.integers(0, 5, num_q), rng.integers(0, 5, num_g)
        q_camids, g_camids = rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)
        args = (distmat, q_pids, g_pids, q_camids, g_camids)
        try:
            expected = rank_metrics_loop(*args, ap=ap, max_rank=10)
        except ValueError:
            with pytest.raises(ValueError):
                rank_metrics(*args, ap=ap, max_rank=10)
            continue
        result = rank_metrics(*args, ap=ap, max_rank=10)
        for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
            assert result[key] == pytest.approx(expected[key], abs=1e-9), key
        np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-12)
        assert result["num_valid_queries"] == expected["num_valid_queries"]
        assert result["num_skipped_queries"] == expected["num_skipped_queries"]


def test_accepts_torch_tensors_and_returns_plain_types():
    result = rank_metrics(*(torch.as_tensor(a) for a in one_query_case()))
    assert result["mAP"] == pytest.approx(50.0)
    assert isinstance(result["mAP"], float) and isinstance(result["num_valid_queries"], int)
    assert result["cmc"].shape == (50,) and result["cmc"][-1] == 1.0


def test_invalid_ap_is_a_clear_error():
    with pytest.raises(ValueError, match=r"ap: expected one of \['torchreid', 'official'\], got 'voc'"):
        rank_metrics(*one_query_case(), ap="voc")


def test_shape_mismatch_and_nan_are_errors():
    distmat, q_pids, g_pids, q_camids, g_camids = one_query_case()
    with pytest.raises(ValueError, match="g_pids: has 4 entries"):
        rank_metrics(distmat, q_pids, g_pids[:4], q_camids, g_camids)
    with pytest.raises(ValueError, match="NaN"):
        rank_metrics(np.full_like(distmat, np.nan), q_pids, g_pids, q_camids, g_camids)
