"""A validation split carved from the training identities, so that no decision reads the test split.

Every decision a run makes (the best checkpoint, a pruning schedule that steers by mAP, a
tuned setting) must read data the final score does not: the test split is scored once, on
the finished model (Blalock et al. 2020, "What is the state of neural network pruning?").
:func:`carve_validation` moves ``num_ids`` training identities, chosen by ``seed``, out of
the training split into a validation query / gallery built like Market-1501's test split:
for each chosen identity, one image per camera is a query and its other images are gallery
images. A query whose identity has no gallery image from another camera has no valid match
and is skipped by the metrics, as in the test protocol.
"""

from __future__ import annotations

import random
from dataclasses import replace

from .datasets import ReIDDataset, Sample, relabel


def carve_validation(dataset: ReIDDataset, num_ids: int, seed: int = 0) -> ReIDDataset:
    """A copy of ``dataset`` with ``num_ids`` training identities moved into ``val_query`` / ``val_gallery``.

    The identities are drawn with ``random.Random(seed)`` from the sorted training pids, and
    each identity's query per camera likewise, so the split depends on the dataset and the seed
    alone (not on the run's training seed: replicate source models share one validation split).
    The remaining training pids are relabelled 0..N-1; validation samples keep their training
    labels of before the carving (they only need to tell identities apart).

    Raises:
        ValueError: ``num_ids`` is not below the number of training identities (training needs some),
            or the chosen identities give no validation query with a match from another camera.
    """
    pids = sorted({s.pid for s in dataset.train})
    if not 0 < num_ids < len(pids):
        raise ValueError(f"data.val_ids: expected between 1 and {len(pids) - 1} (the training split has {len(pids)} "
                         f"identities, and training needs some), got {num_ids}")
    rng = random.Random(seed)
    chosen = set(rng.sample(pids, num_ids))
    by_identity: dict[int, list[Sample]] = {}
    for sample in dataset.train:
        if sample.pid in chosen:
            by_identity.setdefault(sample.pid, []).append(sample)
    query, gallery = [], []
    for pid in sorted(by_identity):
        by_camera: dict[int, list[Sample]] = {}
        for sample in by_identity[pid]:
            by_camera.setdefault(sample.camid, []).append(sample)
        for camid in sorted(by_camera):
            images = by_camera[camid]
            pick = rng.randrange(len(images))
            query.append(images[pick])
            gallery.extend(images[:pick] + images[pick + 1:])
    matched = {(s.pid, s.camid) for s in query if any(g.pid == s.pid and g.camid != s.camid for g in gallery)}
    if not matched:
        raise ValueError(f"data.val_ids: the {num_ids} validation identities drawn with data.val_seed={seed} give no "
                         "query with a gallery image from another camera; choose more identities")
    train = relabel([s for s in dataset.train if s.pid not in chosen])
    return replace(dataset, train=train, val_query=query, val_gallery=gallery)
