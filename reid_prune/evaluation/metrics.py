"""Retrieval metrics under the Market-1501 protocol: CMC, mAP and mINP.

Protocol, for every query:

* gallery items with the query's pid **and** the query's camera are removed
  (they are trivial matches from the same view);
* the remaining items are ranked by increasing distance; ties are broken by
  gallery order (what a stable argsort gives), so the ranking is deterministic;
* the true matches are the remaining items with the query's pid; pid 0
  (Market-1501 distractors) matches nothing unless a query also has pid 0;
* a query with no true match left is skipped and counted in
  ``num_skipped_queries``. Junk images (pid -1) are expected to have been
  dropped by the dataset parser already (see ``docs/architecture.md``).

Per query, with the true matches at 0-based ranks r_0 < r_1 < ... < r_{n-1}
among the remaining items:

* ``ap="torchreid"`` (torchreid, fast-reid): non-interpolated AP, the mean over
  the hits of the precision at the hit, ``mean_k (k + 1) / (r_k + 1)``.
* ``ap="official"``: the trapezoid rule of the official Market-1501 evaluation
  (Zheng et al., ``compute_AP.m`` in the IDE baseline and its Python ports).
  It walks down the list keeping ``old_precision`` (1.0 before the first item)
  and adds ``(recall - old_recall) * (old_precision + precision) / 2`` at each
  item, which is non-zero only at hits, so
  ``AP = sum_k (1/n) * (p_before_k + (k + 1) / (r_k + 1)) / 2`` with
  ``p_before_k = k / r_k`` (the precision one item above the hit) or 1.0 when
  ``r_k == 0``.
* INP (Ye et al., "Deep Learning for Person Re-identification: A Survey and
  Outlook", the AGW baseline): ``n / (r_{n-1} + 1)``, the share of true matches
  within the list cut at the hardest one.
* CMC at rank k: 1 when the first hit is within the top k (``r_0 < k``).
"""

from __future__ import annotations

import numpy as np
import torch

AP_MODES = ("torchreid", "official")

# Distance-matrix rows handled at once by the vectorised path: bounds the
# temporary (rows, G) arrays to about 4 M elements each.
_CHUNK_ELEMENTS = 1 << 22


def rank_metrics(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    ap: str = "torchreid",
    max_rank: int = 50,
) -> dict:
    """Compute CMC, mAP and mINP for a query x gallery distance matrix.

    Vectorised over queries, in chunks of rows. It never materialises a full
    ranking: the metrics need only the rank of each true match among the kept
    gallery items. For a query row it sorts the distances (values only) and
    reads, by binary search, how many items lie strictly below each true
    match; equal distances are then ordered by gallery index and the removed
    same-camera items that rank above the match are subtracted. The result is
    exactly that of :func:`rank_metrics_loop`, ties included.

    Args:
        distmat: (Q, G) distances, numpy array or torch tensor; smaller is more similar.
        q_pids: (Q,) query person ids.
        g_pids: (G,) gallery person ids.
        q_camids: (Q,) query camera ids.
        g_camids: (G,) gallery camera ids.
        ap: ``"torchreid"`` (mean precision at the hits) or ``"official"``
            (trapezoid rule of the Market-1501 evaluation code); see the module docstring.
        max_rank: length of the returned CMC curve.

    Returns:
        A dict with ``mAP``, ``rank1``, ``rank5``, ``rank10`` and ``mINP`` in
        percent (floats), ``cmc`` (numpy float64 array of length ``max_rank``,
        fractions; ``cmc[k]`` is the share of queries whose first true match is
        within the top ``k + 1``), ``num_valid_queries`` and ``num_skipped_queries``.
        All averages are over the valid queries.

    Raises:
        ValueError: on an unknown ``ap``, mismatched shapes, NaN distances, or
            when no query has a true match in the gallery.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, ap, max_rank
    )
    num_q, num_g = distmat.shape
    chunk = max(1, _CHUNK_ELEMENTS // max(num_g, 1))
    gallery_index = np.arange(num_g)
    aps, inps, first_ranks = [], [], []
    for start in range(0, num_q, chunk):
        stop = min(start + chunk, num_q)
        dist = distmat[start:stop]
        same_pid = q_pids[start:stop, None] == g_pids[None, :]
        same_cam = q_camids[start:stop, None] == g_camids[None, :]
        # (rows, P): distances and gallery indices of each row's true matches, padded.
        match_rows, match_cols = np.nonzero(same_pid & ~same_cam)
        num_matches = np.bincount(match_rows, minlength=stop - start)
        match_dist = _pad_rows(match_rows, dist[match_rows, match_cols], num_matches, np.inf)
        match_index = _pad_rows(match_rows, match_cols, num_matches, num_g)
        # (rows, J): the removed items (same pid, same camera), padded past every match.
        removed_rows, removed_cols = np.nonzero(same_pid & same_cam)
        num_removed = np.bincount(removed_rows, minlength=stop - start)
        removed_dist = _pad_rows(removed_rows, dist[removed_rows, removed_cols], num_removed, np.inf)
        removed_index = _pad_rows(removed_rows, removed_cols, num_removed, num_g)

        # Rank of each match among all G items: items strictly closer, plus equal ones earlier in the gallery.
        sorted_dist = torch.from_numpy(np.sort(dist, axis=1))
        match_dist_t = torch.from_numpy(match_dist)
        closer = torch.searchsorted(sorted_dist, match_dist_t).numpy()
        tied = (torch.searchsorted(sorted_dist, match_dist_t, right=True).numpy() - closer) > 1
        tie_row, tie_slot = np.nonzero(tied & (match_index < num_g))
        # Rare with trained features, but a collapsed model ties everything: go in blocks of rows.
        for tie_start in range(0, tie_row.size, chunk):
            rows, slots = tie_row[tie_start : tie_start + chunk], tie_slot[tie_start : tie_start + chunk]
            equal = dist[rows] == match_dist[rows, slots, None]
            earlier = gallery_index[None, :] < match_index[rows, slots, None]
            closer[rows, slots] += np.count_nonzero(equal & earlier, axis=1)
        # Removed items that rank above a match (same tie rule) do not count.
        removed_above = (removed_dist[:, None, :] < match_dist[:, :, None]) | (
            (removed_dist[:, None, :] == match_dist[:, :, None]) & (removed_index[:, None, :] < match_index[:, :, None])
        )
        is_hit = np.arange(match_dist.shape[1])[None, :] < num_matches[:, None]
        # Padding gets rank G, past every real rank, so sorting keeps it last.
        ranks = np.sort(np.where(is_hit, closer - removed_above.sum(axis=2), num_g), axis=1)

        keep = num_matches > 0
        ranks, num_matches, is_hit = ranks[keep], num_matches[keep], is_hit[keep]
        hit_count = np.arange(1, ranks.shape[1] + 1)[None, :]
        precision_at_hit = hit_count / (ranks + 1)
        if ap == "torchreid":
            per_hit = precision_at_hit
        else:
            precision_above = np.where(ranks > 0, (hit_count - 1) / np.maximum(ranks, 1), 1.0)
            per_hit = (precision_above + precision_at_hit) / 2
        aps.append(np.where(is_hit, per_hit, 0.0).sum(axis=1) / num_matches)
        inps.append(num_matches / (ranks[np.arange(len(ranks)), num_matches - 1] + 1))
        first_ranks.append(ranks[:, 0])
    return _summarise(np.concatenate(aps), np.concatenate(inps), np.concatenate(first_ranks), num_q, max_rank)


def rank_metrics_loop(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    ap: str = "torchreid",
    max_rank: int = 50,
) -> dict:
    """Reference implementation of :func:`rank_metrics`: one stable argsort per query.

    Slow (a Python loop over queries) but plainly the protocol of the module
    docstring; tests and ``scripts/bench_eval.py`` check the vectorised
    version against it. Same arguments and return value as :func:`rank_metrics`.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, ap, max_rank
    )
    aps, inps, first_ranks = [], [], []
    for q in range(distmat.shape[0]):
        hits = g_pids[ranked_gallery(distmat[q], q_pids[q], q_camids[q], g_pids, g_camids)] == q_pids[q]
        if not hits.any():
            continue
        num_hits = int(hits.sum())
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        if ap == "torchreid":
            aps.append(precision[hits].sum() / num_hits)
        else:
            # Walk the list as the official code does: trapezoids between consecutive precisions.
            previous = np.concatenate(([1.0], precision[:-1]))
            aps.append(((previous + precision) / 2)[hits].sum() / num_hits)
        hit_ranks = np.flatnonzero(hits)
        inps.append(num_hits / (hit_ranks[-1] + 1))
        first_ranks.append(hit_ranks[0])
    return _summarise(np.asarray(aps), np.asarray(inps), np.asarray(first_ranks), distmat.shape[0], max_rank)


def ranked_gallery(distances, q_pid, q_camid, g_pids, g_camids) -> np.ndarray:
    """Gallery indices of one query's ranked list under the protocol of the module docstring.

    Args:
        distances: (G,) distances of the query to every gallery item.
        q_pid, q_camid: the query's person id and camera id.
        g_pids, g_camids: (G,) gallery person ids and camera ids.

    Returns:
        (G - removed,) int64 indices into the gallery, nearest first: items with the query's
        pid *and* camera are left out, ties keep gallery order (stable argsort).
    """
    distances, g_pids, g_camids = (_to_numpy(a).reshape(-1) for a in (distances, g_pids, g_camids))
    order = np.argsort(distances, kind="stable")
    return order[~((g_pids[order] == q_pid) & (g_camids[order] == q_camid))]


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, ap: str, max_rank: int):
    if ap not in AP_MODES:
        raise ValueError(f"ap: expected one of {list(AP_MODES)}, got {ap!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank: expected a positive integer, got {max_rank!r}")
    distmat = _to_numpy(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat: expected a (num_query, num_gallery) matrix, got shape {distmat.shape}")
    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float64)
    if np.isnan(distmat).any():
        raise ValueError("distmat contains NaN; check the features (e.g. a zero vector under cosine distance)")
    arrays = [_to_numpy(a).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    num_q, num_g = distmat.shape
    for name, array, expected in zip(("q_pids", "g_pids", "q_camids", "g_camids"), arrays, (num_q, num_g) * 2):
        if len(array) != expected:
            raise ValueError(f"{name}: has {len(array)} entries but distmat has shape {distmat.shape}")
    return (distmat, *arrays)


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _pad_rows(rows: np.ndarray, values: np.ndarray, counts: np.ndarray, fill) -> np.ndarray:
    """Scatter ``values`` (grouped by ascending ``rows``) into a (len(counts), max(counts)) array, padded with ``fill``.

    ``counts[r]`` is how many entries row ``r`` has; entries keep their order within a row.
    """
    width = int(counts.max(initial=0))
    out = np.full((len(counts), max(width, 1)), fill, dtype=values.dtype)
    starts = np.cumsum(counts) - counts
    out[rows, np.arange(len(rows)) - starts[rows]] = values
    return out


def _summarise(aps: np.ndarray, inps: np.ndarray, first_ranks: np.ndarray, num_queries: int, max_rank: int) -> dict:
    """Average the per-query values over the valid queries."""
    num_valid = len(aps)
    if num_valid == 0:
        raise ValueError(
            "rank_metrics: no query has a true match in the gallery from another camera; "
            "check that query and gallery share identities and that camera ids are right"
        )
    cmc = np.cumsum(np.bincount(np.minimum(first_ranks, max_rank), minlength=max_rank + 1)[:max_rank]) / num_valid
    return {
        "mAP": float(aps.mean() * 100),
        "rank1": float(np.mean(first_ranks < 1) * 100),
        "rank5": float(np.mean(first_ranks < 5) * 100),
        "rank10": float(np.mean(first_ranks < 10) * 100),
        "mINP": float(inps.mean() * 100),
        "cmc": cmc.astype(np.float64),
        "num_valid_queries": int(num_valid),
        "num_skipped_queries": int(num_queries - num_valid),
    }
