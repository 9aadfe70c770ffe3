"""``reid-prune visrank``: ranked-retrieval pictures of a checkpoint on its config's test split.

Writes into the output folder one picture per chosen query and ``summary.png``
(:func:`~reid_prune.evaluation.visualize_ranked`), and ``visrank.json``: for each query its
image, identity and camera and its top-k matches (image, identity, camera, rank, distance,
whether the identity is the query's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..config import Config
from ..evaluation import extract_features, pairwise_distance, visualize_ranked
from ..evaluation.visrank import choose_queries
from ..runtime import Runtime
from .evaluate import check_architecture
from .wiring import make_eval_loaders, prepare_dataset


def visrank_checkpoint(cfg: Config, checkpoint: str | Path, *, output: str | Path, queries: int = 8,
                       query_ids: Sequence[int] | None = None, topk: int = 10, seed: int = 0,
                       progress: bool = True) -> dict[str, Any]:
    """Draw the top-``topk`` gallery matches of chosen queries, ranked by ``checkpoint``'s features.

    Args:
        cfg: the run config: dataset, image size, ``eval.metric`` and ``eval.flip``,
            ``model.retrieval_feature``.
        checkpoint: a model written by reid-prune (pruned or not).
        output: the folder to write; must not hold a summary.png yet.
        queries: how many queries to draw at random (with a true match in another camera).
        query_ids: draw every query of these person ids instead.
        topk: matches per query.
        seed: the seed of the random choice; the same seed gives the same queries.
        progress: progress bars and the dataset summary.

    Returns:
        The content of ``visrank.json``: ``{"checkpoint", "metric", "topk", "seed", "queries": [...]}``.

    Raises:
        FileExistsError: ``output`` already holds a summary.png.
        ValueError: ``topk`` or ``queries`` < 1, unknown person ids, or an architecture other
            than the config's; before any feature is computed.
    """
    out = Path(output)
    if (out / "summary.png").exists():
        raise FileExistsError(f"{out / 'summary.png'} exists; choose another --output")
    if topk < 1:
        raise ValueError(f"--topk: expected at least 1 match per query, got {topk}")
    ckpt = read_checkpoint(checkpoint)
    check_architecture(cfg, ckpt, checkpoint)
    dataset = prepare_dataset(cfg.data, verbose=progress)
    chosen = choose_queries(dataset.query, dataset.gallery, queries, seed=seed, pids=query_ids)
    model = model_from_checkpoint(ckpt)
    model.set_retrieval_feature(cfg.model.retrieval_feature)
    compute = Runtime.from_config(cfg.train).compute  # as every evaluation
    model = compute.place(model)
    query_loader, gallery_loader = make_eval_loaders(cfg, dataset)
    options = {"device": compute.device, "flip": cfg.eval.flip, "precision": compute.precision,
               "channels_last": compute.channels_last, "progress": progress}
    qf, _, _ = extract_features(model, query_loader, **options)
    gf, _, _ = extract_features(model, gallery_loader, **options)
    distmat = pairwise_distance(qf, gf, cfg.eval.metric)
    drawn = visualize_ranked(distmat, dataset.query, dataset.gallery, out, queries=chosen, topk=topk,
                             tile_size=(cfg.data.height, cfg.data.width), progress=progress)

    def item(sample) -> dict[str, Any]:
        return {"path": sample.path, "pid": sample.pid, "camera": sample.camid + 1}

    record = {
        "checkpoint": str(checkpoint), "metric": cfg.eval.metric, "topk": topk, "seed": seed,
        "queries": [{"index": d.query_index, "image": d.image.name, **item(dataset.query[d.query_index]),
                     "matches": [{**item(dataset.gallery[m.gallery_index]), "rank": m.rank,
                                  "distance": round(m.distance, 6), "same_identity": m.same_identity}
                                 for m in d.matches]}
                    for d in drawn],
    }
    (out / "visrank.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
