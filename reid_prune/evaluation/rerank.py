"""k-reciprocal re-ranking of query x gallery distances (Zhong, Zheng, Cao and Li, "Re-ranking Person
Re-identification with k-reciprocal Encoding", CVPR 2017), without any dense (Q + G) x (Q + G) matrix.

What is computed follows the authors' public Python code (``python-version/re_ranking_ranklist.py`` in
github.com/zhunzhong07/person-re-ranking), which torchreid ships unchanged as ``re_ranking`` in
``torchreid.utils.rerank`` (``torchreid.reid.utils.rerank`` in the 0.2.5 package), so numbers compare with
the ones those tools report. On the pool of the Q queries and the G gallery images together (N = Q + G
items, queries first):

1. ``d'(i, j) = d(i, j)^2 / max_l d(i, l)^2``: the configured distance (:func:`~.features.pairwise_distance`)
   squared, each row divided by its largest value (the paper's equations use ``d`` itself).
2. ``N(i, k)``: the k + 1 items nearest to i under ``d'``, i itself first (the paper's k nearest, in a pool
   that holds i). ``R(i, k) = {j in N(i, k) : i in N(j, k)}``, the k-reciprocal neighbours.
3. ``R*(i) = R(i, k1)``, plus ``R(c, h)`` with ``h = round(k1 / 2)`` (half to even, as numpy rounds) for each
   c in ``R(i, k1)`` with ``|R(c, h) & R(i, k1)| > 2/3 |R(c, h)|`` (the paper writes ``>=``; the code ``>``).
4. ``V[i, j] = exp(-d'(i, j))`` for j in ``R*(i)``, else 0, each row divided by its sum (the paper's
   Gaussian kernel is not normalised).
5. Local query expansion, unless k2 == 1: ``V[i]`` becomes the mean of ``V[j]`` over the k2 items j nearest
   to i under ``d'`` (i included): the original distance's ranking, the paper's N(p, k2).
6. ``d_J(q, g) = 1 - sum_j min(V[q, j], V[g, j]) / sum_j max(V[q, j], V[g, j])``; the sum of the
   maxima is computed as ``|V[q]|_1 + |V[g]|_1 - sum of the minima`` (the code writes ``2 - sum``: its rows
   sum to 1).
7. ``d*(q, g) = (1 - lambda) d_J(q, g) + lambda d'(q, g)``.

Ours: equal distances are ranked by pool index (queries first), so the result does not depend on the
sort's algorithm (the code's ``np.argsort`` leaves ties in an unspecified order, and float32 distances do
tie: 6 of the 1,935 CUHK03 test items in docs/results.md); sums are in float64 before the float32 output.

Memory. The reference holds dense N x N arrays: for Market-1501 (3,368 queries, 19,732 gallery images,
N = 23,100) each has 533.6 M cells, 2.13 GB in float32 or int32, and four live at once during its query
expansion (the distances, the argsort, ``V`` and its expansion): 8.5 GB. Here three things grow with N: the N x N
distances, computed in blocks of rows of at most 2^22 cells (16 MiB in float32) and dropped once each
row's nearest neighbours are kept (a (N, max(k1 + 1, k2)) table); the sparse ``V`` (at most N x k2 x |R*|
entries, fewer as neighbours share items); and the (Q, G) float32 output, as large as the plain distance
matrix (254 MiB for Market-1501). The Jaccard sums go over the shared nonzeros of ``V`` (an inverted index,
as the reference does), 2^20 terms and (rows, G) float64 blocks of at most 2^22 cells at a time. On
Market-1501-size 512-d features the whole call peaked at about 0.5 GiB above the memory in use before it,
the output included (docs/results.md, "Re-ranking").
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .features import METRICS, extract_features, pairwise_distance
from .metrics import rank_metrics

# Cells of the N x N distance matrix computed at once: rows per block = this // N.
_CHUNK_ELEMENTS = 1 << 22
# (query, gallery, shared item) terms of the Jaccard sums expanded at once.
_TERMS = 1 << 20
# Rows whose V entries are computed together: their distances to the union of their R* sets (a few thousand items).
_ENCODE_ROWS = 32


def k_reciprocal_distance(query_features, gallery_features, *, metric: str = "cosine", k1: int = 20, k2: int = 6,
                          lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked query x gallery distances (see the module docstring for the steps and their sources).

    Args:
        query_features: (Q, D) features, torch tensor or numpy array.
        gallery_features: (G, D) features.
        metric: the original distance, ``cosine`` or ``euclidean`` (:func:`~.features.pairwise_distance`).
        k1: neighbours of the k-reciprocal sets (the paper's default 20); more than N - 1 means all N.
        k2: neighbours averaged by the local query expansion (default 6; 1 turns it off).
        lambda_value: weight of the original distance in the result, in [0, 1] (default 0.3).

    Returns:
        (Q, G) float32 numpy array; smaller is more similar. Its scale is not the original distance's:
        rank with it, do not threshold it.

    Raises:
        ValueError: on an unknown metric, k1 or k2 below 1, lambda_value outside [0, 1], features that are
            not (Q, D) and (G, D) with Q, G >= 1, a NaN or infinite feature, or features all at one distance
            0 from each other (nothing to rank).
        TypeError: k1 or k2 not an integer, lambda_value not a number.
    """
    features, num_q = _check(query_features, gallery_features, metric, k1, k2, lambda_value)
    n = len(features)
    width = min(max(k1 + 1, k2), n)
    rows = max(1, _CHUNK_ELEMENTS // n)
    nearest = np.empty((n, width), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float32)
    out = np.empty((num_q, n - num_q), dtype=np.float32)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block, row_max[start:stop] = _scaled_rows(features, start, stop, metric)
        nearest[start:stop] = _nearest(block, width)
        if start < num_q:
            out[start:min(stop, num_q)] = lambda_value * block[: num_q - start, num_q:]
    expanded = _expanded_sets(nearest, k1)
    v = _encode(expanded, features, row_max, metric)
    if k2 != 1:
        cols = nearest[:, :k2]
        mean = sp.csr_matrix((np.full(cols.size, 1.0 / cols.shape[1]), cols.ravel(),
                              np.arange(0, cols.size + 1, cols.shape[1])), shape=(n, n))
        v = (mean @ v).tocsr()
    _add_jaccard(out, v, 1 - lambda_value)
    return out


def evaluate_reranked(model: nn.Module, query_loader: Iterable, gallery_loader: Iterable, *, metric: str = "cosine",
                      ap: str = "torchreid", k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                      **extract_options: Any) -> dict[str, Any]:
    """:func:`~.features.evaluate` with re-ranking beside it: one feature extraction, two sets of metrics.

    Args:
        model, query_loader, gallery_loader: as in :func:`~.features.evaluate`.
        metric, ap: as in :func:`~.features.evaluate`.
        k1, k2, lambda_value: as in :func:`k_reciprocal_distance`.
        extract_options: device, flip, precision, channels_last, progress for :func:`~.features.extract_features`.

    Returns:
        The plain :func:`~.metrics.rank_metrics` dict, with ``rerank``: the same keys on the re-ranked
        distances, plus ``k1``, ``k2``, ``lambda`` and ``seconds`` (the wall time of the re-ranking alone).
    """
    qf, q_pids, q_camids = extract_features(model, query_loader, **extract_options)
    gf, g_pids, g_camids = extract_features(model, gallery_loader, **extract_options)
    labels = (q_pids, g_pids, q_camids, g_camids)
    plain = rank_metrics(pairwise_distance(qf, gf, metric), *labels, ap=ap)
    start = time.perf_counter()
    distances = k_reciprocal_distance(qf, gf, metric=metric, k1=k1, k2=k2, lambda_value=lambda_value)
    seconds = time.perf_counter() - start
    reranked = rank_metrics(distances, *labels, ap=ap)
    return {**plain, "rerank": {**reranked, "k1": k1, "k2": k2, "lambda": lambda_value, "seconds": seconds}}


def _check(query_features, gallery_features, metric: str, k1: int, k2: int, lambda_value: float):
    """(the Q + G features as one float32 tensor, Q), or the error that names the argument."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}: expected an integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value}")
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, numbers.Real):
        raise TypeError(f"lambda_value: expected a number in [0, 1], got {lambda_value!r}")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value: expected a number in [0, 1], got {lambda_value!r}")
    qf, gf = (torch.as_tensor(f).detach().cpu().float() for f in (query_features, gallery_features))
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1] or not len(qf) or not len(gf):
        raise ValueError(f"k_reciprocal_distance: expected (Q, D) and (G, D) features with Q, G >= 1, got "
                         f"{tuple(qf.shape)} and {tuple(gf.shape)}")
    features = torch.cat([qf, gf])
    if not torch.isfinite(features).all():
        raise ValueError("k_reciprocal_distance: a feature holds NaN or infinity; check the model's output")
    return features, len(qf)


def _scaled_rows(features: torch.Tensor, start: int, stop: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows start:stop of d' (step 1 of the module docstring), each row's largest squared distance)."""
    block = pairwise_distance(features[start:stop], features, metric)
    np.square(block, out=block)
    largest = block.max(axis=1)
    if not (largest > 0).all():
        raise ValueError("k_reciprocal_distance: every feature lies at distance 0 from every other (a collapsed "
                         "model?); there is nothing to re-rank")
    block /= largest[:, None]
    return block, largest


def _nearest(dist: np.ndarray, width: int) -> np.ndarray:
    """(rows, width) column indices of each row's ``width`` smallest values, nearest first; equal values by index.

    The same order as ``np.argsort(dist, kind="stable")[:, :width]``, without sorting whole rows.
    """
    if width >= dist.shape[1]:
        return np.argsort(dist, axis=1, kind="stable")
    kth = np.partition(dist, width - 1, axis=1)[:, width - 1 : width]
    chosen = dist <= kth
    crowded = np.flatnonzero(chosen.sum(axis=1) > width)
    if crowded.size:  # more values equal the cut than places are left: the lowest column indices take them
        rows, cut = dist[crowded], kth[crowded]
        tied = rows == cut
        places = width - (rows < cut).sum(axis=1, keepdims=True)
        chosen[crowded] &= ~tied | (np.cumsum(tied, axis=1) <= places)
    cols = np.nonzero(chosen)[1].reshape(len(dist), width)  # row-major: increasing index within each row
    order = np.argsort(np.take_along_axis(dist, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _reciprocal(nearest: np.ndarray, k: int) -> sp.csr_matrix:
    """R(i, k) of every item i as row i of an int32 0/1 CSR matrix: j in N(i, k) and i in N(j, k)."""
    top = nearest[:, : k + 1]
    n, width = top.shape
    keep = np.empty(top.shape, dtype=bool)
    rows = max(1, _CHUNK_ELEMENTS // (width * width))
    for start in range(0, n, rows):  # top[top] is (rows, width, width): bounded like the distance blocks
        block = top[start : start + rows]
        keep[start : start + rows] = (top[block] == np.arange(start, start + len(block))[:, None, None]).any(axis=2)
    row_of = np.broadcast_to(np.arange(n)[:, None], top.shape)
    return sp.csr_matrix((np.ones(int(keep.sum()), dtype=np.int32), (row_of[keep], top[keep])), shape=(n, n))


def _expanded_sets(nearest: np.ndarray, k1: int) -> sp.csr_matrix:
    """R*(i) of every item (step 3 of the module docstring) as the sorted pattern of a CSR matrix."""
    n = len(nearest)
    full = _reciprocal(nearest, k1)
    half = _reciprocal(nearest, int(np.around(k1 / 2)))
    # overlap[i, c] = |R(i, k1) & R(c, h)|, read only where c is in R(i, k1).
    overlap = full.multiply(full @ half.T).tocoo()
    half_size = np.diff(half.indptr)
    accept = overlap.data > 2.0 / 3 * half_size[overlap.col]
    taken = sp.csr_matrix((np.ones(int(accept.sum()), dtype=np.int32), (overlap.row[accept], overlap.col[accept])),
                          shape=(n, n))
    expanded = (full + taken @ half).tocsr()
    expanded.sum_duplicates()
    expanded.sort_indices()
    return expanded


def _encode(expanded: sp.csr_matrix, features: torch.Tensor, row_max: np.ndarray, metric: str) -> sp.csr_matrix:
    """V (step 4): exp(-d'(i, j)) on the pattern of R*(i), each row normalised to sum 1, float64 CSR.

    d' is computed again, for a few rows at a time against the items their R* sets hold (close items share
    most of them), and scaled by the row maxima of the first pass.
    """
    n = len(features)
    indptr, indices = expanded.indptr, expanded.indices
    data = np.empty(len(indices), dtype=np.float64)
    rows = max(1, min(_ENCODE_ROWS, _CHUNK_ELEMENTS // n))
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        lo, hi = indptr[start], indptr[stop]
        items = np.unique(indices[lo:hi])
        block = pairwise_distance(features[start:stop], features[torch.from_numpy(items.astype(np.int64))], metric)
        row_of = np.repeat(np.arange(stop - start), np.diff(indptr[start : stop + 1]))
        picked = block[row_of, np.searchsorted(items, indices[lo:hi])].astype(np.float64)
        data[lo:hi] = picked * picked / row_max[start + row_of]
    weights = np.exp(-data)
    row_of = np.repeat(np.arange(n), np.diff(indptr))
    weights /= np.bincount(row_of, weights=weights, minlength=n)[row_of]
    return sp.csr_matrix((weights, indices.copy(), indptr.copy()), shape=(n, n))


def _add_jaccard(out: np.ndarray, v: sp.csr_matrix, weight: float) -> None:
    """Add ``weight`` x the Jaccard distances (step 6) between the first Q rows of ``v`` and the others to ``out``
    (Q, G), block by block."""
    n = v.shape[0]
    num_q, num_g = out.shape
    queries, gallery = v[:num_q], v[num_q:].tocsc()  # gallery column j: the gallery rows where item j is nonzero
    q_sums = np.asarray(queries.sum(axis=1)).ravel()
    g_sums = np.asarray(v[num_q:].sum(axis=1)).ravel()
    column_size = np.diff(gallery.indptr)
    entry_terms = column_size[queries.indices]
    running = np.concatenate([[0], np.cumsum(entry_terms)])
    row_terms = running[queries.indptr[1:]] - running[queries.indptr[:-1]]
    for start, stop in _blocks(row_terms, _TERMS, max(1, _CHUNK_ELEMENTS // num_g)):
        lo, hi = queries.indptr[start], queries.indptr[stop]
        counts = entry_terms[lo:hi]
        local_row = np.repeat(np.repeat(np.arange(stop - start), np.diff(queries.indptr[start : stop + 1])), counts)
        # For each nonzero (q, j) of the block, every gallery row g holding j: positions in gallery.indices.
        first = np.repeat(gallery.indptr[queries.indices[lo:hi]] - (np.cumsum(counts) - counts), counts)
        position = first + np.arange(len(first))
        smaller = np.minimum(np.repeat(queries.data[lo:hi], counts), gallery.data[position])
        shared = np.bincount(local_row * num_g + gallery.indices[position], weights=smaller,
                             minlength=(stop - start) * num_g).reshape(stop - start, num_g)
        union = q_sums[start:stop, None] + g_sums[None, :] - shared
        # In place, to hold two (rows, G) float64 arrays only. Where both codes are empty (possible only with
        # duplicated features) union and shared are 0: the ratio stays 0, the distance 1, as in the reference.
        np.divide(shared, union, out=shared, where=union > 0)
        shared -= 1
        shared *= -weight
        out[start:stop] += shared


def _blocks(costs: np.ndarray, budget: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive (start, stop) row ranges whose summed ``costs`` stay within ``budget`` (a row over it goes
    alone) and that hold at most ``max_rows`` rows."""
    start, n = 0, len(costs)
    while start < n:
        ends = np.cumsum(costs[start : start + max_rows])
        stop = start + max(1, int(np.searchsorted(ends, budget, side="right")))
        yield start, stop
        start = stop
