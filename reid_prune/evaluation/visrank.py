"""Ranked-retrieval pictures: a query and its top-k gallery matches, bordered by whether they are right.

The picture of one query is a row of tiles, drawn with Pillow::

    [query] [rank 1] [rank 2] ... [rank k]

Every tile is the image resized to ``tile_size`` inside a border of :data:`BORDER` pixels:
dark grey (:data:`QUERY_COLOUR`) for the query, green (:data:`MATCH_COLOUR`) for a match
with the query's identity, red (:data:`MISMATCH_COLOUR`) for another identity. Under each
tile a caption of :data:`CAPTION` pixels gives the rank and the distance (under the query:
its identity and 1-based camera). Tiles are :data:`GAP` pixels apart and from the edges, so a row
is ``GAP + (topk + 1) * (W + 2 * BORDER + GAP)`` pixels wide and
``GAP + H + 2 * BORDER + CAPTION + GAP`` high for ``tile_size = (H, W)``; ``summary.png``
stacks the first rows.

The ranked list follows :func:`~reid_prune.evaluation.metrics.ranked_gallery`: gallery
images of the query's identity seen by the query's camera are left out, as in the
Market-1501 protocol, and ties keep gallery order. Modelled on torchreid's ``visrank``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..progress import progress_bar
from .metrics import _to_numpy, ranked_gallery

BORDER = 4  # pixels around each tile
GAP = 6  # pixels between tiles and around the row
CAPTION = 28  # pixels of text under each tile (two lines)
QUERY_COLOUR = (64, 64, 64)
MATCH_COLOUR = (0, 170, 0)
MISMATCH_COLOUR = (220, 0, 0)
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


class ImageRecord(Protocol):
    """What is read of a query or gallery item (e.g. :class:`~reid_prune.data.Sample`)."""

    path: str
    pid: int
    camid: int


@dataclass
class RankedMatch:
    """One gallery item in a query's ranked list: ``rank`` is 1-based, ``distance`` as given."""

    gallery_index: int
    rank: int
    distance: float
    same_identity: bool


@dataclass
class RankedQuery:
    """A drawn query: its index in the query list, its picture and its top-k matches."""

    query_index: int
    image: Path
    matches: list[RankedMatch]
    first_match_rank: int | None  # 1-based rank of the first true match in the whole ranking (None: none)


def row_size(topk: int, tile_size: tuple[int, int] = (128, 64)) -> tuple[int, int]:
    """(width, height) in pixels of the picture of one query with ``topk`` matches."""
    height, width = tile_size
    return GAP + (topk + 1) * (width + 2 * BORDER + GAP), GAP + height + 2 * BORDER + CAPTION + GAP


def tile_origin(slot: int, tile_size: tuple[int, int] = (128, 64)) -> tuple[int, int]:
    """(x, y) of the top-left border pixel of tile ``slot`` (0 = the query, r = rank r) in a row."""
    return GAP + slot * (tile_size[1] + 2 * BORDER + GAP), GAP


def choose_queries(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], num: int, *, seed: int = 0,
                   pids: Sequence[int] | None = None) -> list[int]:
    """Indices of the queries to draw, reproducibly.

    Args:
        query, gallery: the two lists of the test split.
        num: how many queries to draw at random (ignored when ``pids`` is given).
        seed: the random seed; the same seed and lists give the same queries.
        pids: draw every query of these person ids instead (in query order).

    Returns:
        Sorted query indices. Random picks come only from queries with a true match in
        another camera (the ones the metrics count).

    Raises:
        ValueError: ``num < 1``, a pid with no query, or no query with a true match.
    """
    if pids is not None:
        missing = sorted(set(pids) - {q.pid for q in query})
        if missing:
            raise ValueError(f"--query-ids: person ids {missing[:5]} have no query image; "
                             f"query ids range {min(q.pid for q in query)}..{max(q.pid for q in query)}")
        wanted = set(pids)
        return [i for i, q in enumerate(query) if q.pid in wanted]
    if num < 1:
        raise ValueError(f"--queries: expected at least 1 query, got {num}")
    cameras: dict[int, set[int]] = {}
    for g in gallery:
        cameras.setdefault(g.pid, set()).add(g.camid)
    # A query has a true match when its pid is in the gallery under some other camera.
    valid = [i for i, q in enumerate(query) if cameras.get(q.pid, set()) - {q.camid}]
    if not valid:
        raise ValueError("no query has a true match in the gallery from another camera; check the dataset")
    if num > len(valid):
        warnings.warn(f"--queries {num}: only {len(valid)} queries have a true match in another camera; "
                      f"drawing all {len(valid)}", UserWarning, stacklevel=2)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(valid, size=min(num, len(valid)), replace=False).tolist())


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _tile(canvas: Image.Image, slot: int, path: str, colour: tuple[int, int, int], lines: Sequence[str],
          tile_size: tuple[int, int], font: ImageFont.ImageFont) -> None:
    """Paste the image of ``path`` with its border and caption into ``canvas`` at tile ``slot``."""
    height, width = tile_size
    x, y = tile_origin(slot, tile_size)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x, y, x + width + 2 * BORDER - 1, y + height + 2 * BORDER - 1), fill=colour)
    with Image.open(path) as image:
        canvas.paste(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), (x + BORDER, y + BORDER))
    for i, text in enumerate(lines):
        draw.text((x, y + height + 2 * BORDER + 2 + i * (CAPTION // 2)), text, fill=TEXT_COLOUR, font=font)


def draw_ranked_row(query: ImageRecord, matches: Sequence[tuple[ImageRecord, RankedMatch]], topk: int, *,
                    tile_size: tuple[int, int] = (128, 64), first_match_rank: int | None = None) -> Image.Image:
    """The picture of one query and its matches (at most ``topk``), laid out as the module docstring says.

    ``first_match_rank`` (the rank of the query's first true match, when known) is written under
    the query, so a row of red tiles still says how far down the right person is.
    """
    canvas = Image.new("RGB", row_size(topk, tile_size), BACKGROUND)
    font = _font()
    found = "" if first_match_rank is None else f"match @{first_match_rank}"
    _tile(canvas, 0, query.path, QUERY_COLOUR, [f"id {query.pid} c{query.camid + 1}", found], tile_size, font)
    for record, match in matches[:topk]:
        colour = MATCH_COLOUR if match.same_identity else MISMATCH_COLOUR
        # Four decimals: pooled ReLU features give cosine distances of a few thousandths.
        _tile(canvas, match.rank, record.path, colour, [f"rank {match.rank}", f"{match.distance:.4f}"], tile_size,
              font)
    return canvas


def visualize_ranked(
    distmat,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    output: str | Path,
    *,
    queries: Sequence[int] | None = None,
    topk: int = 10,
    tile_size: tuple[int, int] = (128, 64),
    summary_rows: int = 8,
    progress: bool = False,
) -> list[RankedQuery]:
    """Draw each chosen query with its top-k gallery matches; write one PNG per query and ``summary.png``.

    Example::

        from reid_prune.evaluation import pairwise_distance, visualize_ranked
        distmat = pairwise_distance(query_features, gallery_features)
        drawn = visualize_ranked(distmat, dataset.query, dataset.gallery, "visrank/", queries=[0, 5], topk=10)

    Args:
        distmat: (Q, G) distances (numpy or torch), smaller = more similar.
        query, gallery: the Q and G items (``path``, ``pid``, ``camid``), in distmat order.
        output: folder for ``query_NNNNN_idP_cC.png`` (one per query: its index, pid and
            1-based camera) and ``summary.png``; created if missing.
        queries: query indices to draw (default: all).
        topk: matches per query, >= 1; beyond what the gallery ranks, a UserWarning says how many are drawn.
        tile_size: (H, W) of each drawn image, in pixels.
        summary_rows: how many of the drawn queries ``summary.png`` stacks (the first ones).
        progress: show a progress bar (:func:`~reid_prune.progress.progress_bar`).

    Returns:
        One :class:`RankedQuery` per drawn query, in the order of ``queries``.

    Raises:
        ValueError: a distmat whose shape does not match the lists, ``topk < 1``, an index
            out of range, or ``summary_rows < 1``.
    """
    distmat = _to_numpy(distmat)
    if distmat.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat has shape {distmat.shape} but there are {len(query)} queries and "
                         f"{len(gallery)} gallery items")
    if topk < 1 or summary_rows < 1:
        raise ValueError(f"topk and summary_rows must be at least 1, got {topk} and {summary_rows}")
    queries = list(range(len(query))) if queries is None else [int(i) for i in queries]
    bad = [i for i in queries if not 0 <= i < len(query)]
    if bad:
        raise ValueError(f"query indices {bad[:5]} are out of range 0..{len(query) - 1}")
    g_pids = np.array([g.pid for g in gallery])
    g_camids = np.array([g.camid for g in gallery])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    drawn, rows = [], []
    full = {qi: ranked_gallery(distmat[qi], query[qi].pid, query[qi].camid, g_pids, g_camids) for qi in queries}
    orders = {qi: order[:topk] for qi, order in full.items()}
    # Every row has the same width (summary.png stacks them), but no wider than the longest ranking:
    # a k beyond the gallery would only add blank tiles.
    tiles = min(topk, max((len(order) for order in orders.values()), default=1)) or 1
    if tiles < topk and queries:
        warnings.warn(f"--topk {topk}: the gallery ranks at most {tiles} images for these queries (their identity's "
                      f"images from the query's own camera are left out, as in evaluation); drawing {tiles} per query",
                      UserWarning, stacklevel=2)
    for qi in progress_bar(queries, desc="visrank", disable=not progress, leave=False):
        q = query[qi]
        matches = [RankedMatch(int(gi), rank, float(distmat[qi, gi]), bool(g_pids[gi] == q.pid))
                   for rank, gi in enumerate(orders[qi], 1)]
        hits = np.flatnonzero(g_pids[full[qi]] == q.pid)
        first = int(hits[0]) + 1 if hits.size else None
        row = draw_ranked_row(q, [(gallery[m.gallery_index], m) for m in matches], tiles, tile_size=tile_size,
                              first_match_rank=first)
        path = out / f"query_{qi:05d}_id{q.pid}_c{q.camid + 1}.png"
        row.save(path)
        drawn.append(RankedQuery(qi, path, matches, first))
        if len(rows) < summary_rows:
            rows.append(row)
    if rows:
        summary = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), BACKGROUND)
        for i, row in enumerate(rows):
            summary.paste(row, (0, i * row.height))
        summary.save(out / "summary.png")
    return drawn
