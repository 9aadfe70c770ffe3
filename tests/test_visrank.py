"""Ranked-retrieval pictures on a constructed case: order, protocol exclusion, border colours, sizes, choice."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reid_prune.data import Sample
from reid_prune.evaluation import visualize_ranked
from reid_prune.evaluation.visrank import (BORDER, CAPTION, GAP, MATCH_COLOUR, MISMATCH_COLOUR, QUERY_COLOUR,
                                           choose_queries, row_size)

TILE = (40, 20)  # (H, W) of each drawn image


def solid(tmp_path, name: str, colour: tuple[int, int, int]) -> str:
    path = tmp_path / f"{name}.png"
    Image.new("RGB", (30, 60), colour).save(path)
    return str(path)


@pytest.fixture
def case(tmp_path):
    """Two queries and six gallery images, each a solid colour of its own, with hand-ranked answers."""
    colours = [(10 * i + 5, 200 - 20 * i, 100) for i in range(8)]
    query = [Sample(solid(tmp_path, "q0", colours[0]), 1, 0), Sample(solid(tmp_path, "q1", colours[1]), 2, 1)]
    # (pid, camid) of the gallery; g0 has query 0's pid and camera, so query 0 never sees it.
    gallery_ids = [(1, 0), (2, 1), (1, 1), (3, 0), (1, 2), (2, 0)]
    gallery = [Sample(solid(tmp_path, f"g{i}", colours[2 + i]), pid, cam) for i, (pid, cam) in enumerate(gallery_ids)]
    distmat = np.array([[0.05, 0.20, 0.30, 0.10, 0.50, 0.40],
                        [0.60, 0.01, 0.15, 0.15, 0.70, 0.02]], dtype=np.float32)
    # Query 0 (pid 1, cam 0): g0 removed; by distance g3, g1, g2, g5, g4.
    # Query 1 (pid 2, cam 1): g1 removed (same pid, same camera); g5, g2 and g3 (tie: gallery order), g0, g4.
    expected = {0: [3, 1, 2, 5, 4], 1: [5, 2, 3, 0, 4]}
    return query, gallery, distmat, expected, tmp_path / "out"


def test_first_true_match_is_found_beyond_the_drawn_top_k(case):
    query, gallery, distmat, _, out = case
    drawn = visualize_ranked(distmat, query, gallery, out, topk=1, tile_size=TILE)
    # Query 0 (pid 1): g3 (pid 3), g1 (pid 2), then g2 (pid 1) at rank 3; query 1 (pid 2): g5 at rank 1.
    assert [d.first_match_rank for d in drawn] == [3, 1]
    assert [m.same_identity for d in drawn for m in d.matches] == [False, True]


def pixel(image: Image.Image, slot: int, dx: int, dy: int) -> tuple[int, int, int]:
    """A pixel of tile ``slot`` (0: the query), offset from the tile's top-left border corner."""
    height, width = TILE
    return image.getpixel((GAP + slot * (width + 2 * BORDER + GAP) + dx, GAP + dy))


def test_borders_follow_the_true_identities_in_rank_order(case):
    query, gallery, distmat, expected, out = case
    drawn = visualize_ranked(distmat, query, gallery, out, topk=5, tile_size=TILE)
    height, width = TILE
    assert [result.query_index for result in drawn] == list(expected)  # every query drawn, in order, once
    for result in drawn:
        q = query[result.query_index]
        order = expected[result.query_index]
        assert [m.gallery_index for m in result.matches] == order
        assert [m.distance for m in result.matches] == pytest.approx(distmat[result.query_index, order].tolist())
        image = Image.open(result.image).convert("RGB")
        assert pixel(image, 0, 1, 1) == QUERY_COLOUR
        for rank, gi in enumerate(order, 1):
            colour = MATCH_COLOUR if gallery[gi].pid == q.pid else MISMATCH_COLOUR
            # The border on all four sides, and the image itself (its solid colour) inside.
            for dx, dy in ((1, 1), (width + 2 * BORDER - 2, height + 2 * BORDER - 2), (BORDER // 2, height // 2)):
                assert pixel(image, rank, dx, dy) == colour, (result.query_index, rank)
            assert pixel(image, rank, BORDER + width // 2, BORDER + height // 2) == \
                Image.open(gallery[gi].path).getpixel((0, 0))


def test_picture_sizes(case):
    query, gallery, distmat, _, out = case
    drawn = visualize_ranked(distmat, query, gallery, out, topk=3, tile_size=TILE)
    height, width = TILE
    row = (GAP + 4 * (width + 2 * BORDER + GAP), GAP + height + 2 * BORDER + CAPTION + GAP)
    assert [Image.open(d.image).size for d in drawn] == [row, row]
    assert [d.image.name for d in drawn] == ["query_00000_id1_c1.png", "query_00001_id2_c2.png"]
    assert Image.open(out / "summary.png").size == (row[0], 2 * row[1])
    # summary.png stacks the rows as drawn.
    summary = np.asarray(Image.open(out / "summary.png").convert("RGB"))
    np.testing.assert_array_equal(summary[row[1]:], np.asarray(Image.open(drawn[1].image).convert("RGB")))


def test_a_topk_beyond_the_ranking_is_capped(case):
    query, gallery, distmat, _, out = case
    drawn = visualize_ranked(distmat, query, gallery, out, queries=[0], topk=7, tile_size=TILE)
    assert len(drawn[0].matches) == 5  # six gallery images, one removed by the protocol
    image = Image.open(drawn[0].image).convert("RGB")
    assert image.size == row_size(5, TILE)  # 5 tiles after the query, not 7 (the last two would be blank)
    assert pixel(image, 5, 1, 1) != (255, 255, 255)


def test_queries_are_chosen_reproducibly_among_those_with_a_true_match():
    gallery = [Sample("g", pid, cam) for pid, cam in [(1, 1), (2, 0), (3, 0), (3, 1), (4, 2)]]
    # Query 1 (pid 2, cam 0) has its only gallery image in its own camera; query 4 (pid 5) has none.
    query = [Sample("q", pid, cam) for pid, cam in [(1, 0), (2, 0), (3, 0), (3, 2), (5, 1), (4, 0)]]
    valid = {0, 2, 3, 5}
    for seed in range(20):
        chosen = choose_queries(query, gallery, 3, seed=seed)
        assert chosen == choose_queries(query, gallery, 3, seed=seed) and chosen == sorted(chosen)
        assert len(chosen) == 3 and set(chosen) <= valid
    assert choose_queries(query, gallery, 10, seed=0) == sorted(valid)
    assert choose_queries(query, gallery, 1, pids=[3, 5]) == [2, 3, 4]
    with pytest.raises(ValueError, match=r"person ids \[9\] have no query image"):
        choose_queries(query, gallery, 1, pids=[3, 9])


def test_bad_arguments_are_refused(case):
    query, gallery, distmat, _, out = case
    with pytest.raises(ValueError, match="distmat has shape"):
        visualize_ranked(distmat[:, :3], query, gallery, out)
    with pytest.raises(ValueError, match="out of range"):
        visualize_ranked(distmat, query, gallery, out, queries=[2])
    with pytest.raises(ValueError, match="at least 1"):
        visualize_ranked(distmat, query, gallery, out, topk=0)
