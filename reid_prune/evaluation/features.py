"""Feature extraction, query x gallery distances and the end-to-end evaluation of a model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import autocast_context
from ..progress import progress_bar
from .metrics import rank_metrics

METRICS = ("cosine", "euclidean")

# Query rows per block of pairwise_distance: bounds the (rows, G) temporaries.
_DISTANCE_CHUNK_ELEMENTS = 1 << 24


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, and give each its own training flag back on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def extract_features(
    model: nn.Module,
    loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    flip: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """Embed every image of a loader.

    The model runs in eval mode under :func:`torch.inference_mode`; each
    submodule's training flag is restored afterwards. Rows follow the loader's
    order, with the pids and camera ids that came with them.

    Args:
        model: maps (B, 3, H, W) images to (B, D) features; must already be on ``device``.
        loader: yields ``(images, pids, camids, index)`` batches.
        device: where the images are sent.
        flip: average each image's feature with that of its horizontal mirror.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast, or a train.amp setting such as ``auto``
            (see :mod:`reid_prune.precision`); features are returned in float32 either way.
        channels_last: send the images in NHWC memory format (match the model's, see
            :meth:`~reid_prune.precision.ComputeSettings.place`).
        progress: show a progress bar (:func:`~reid_prune.progress.progress_bar`).

    Returns:
        ``(features (N, D) float32 CPU tensor, pids (N,), camids (N,))``.
    """
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    features, pids, camids = [], [], []
    with eval_mode(model), torch.inference_mode():
        batches = progress_bar(loader, desc="features", disable=not progress, leave=False)
        for images, batch_pids, batch_camids, _ in batches:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            with autocast_context(device, precision):
                batch = model(images).float()
                if flip:
                    batch = (batch + model(images.flip(-1)).float()) / 2
            features.append(batch.cpu())
            pids.append(np.asarray(batch_pids).reshape(-1))
            camids.append(np.asarray(batch_camids).reshape(-1))
    if not features:
        raise ValueError("extract_features: the loader yielded no batch; is the query or gallery split empty?")
    return torch.cat(features), np.concatenate(pids), np.concatenate(camids)


def pairwise_distance(qf, gf, metric: str = "cosine") -> np.ndarray:
    """Distances between every query and gallery feature.

    Args:
        qf: (Q, D) query features, torch tensor or numpy array.
        gf: (G, D) gallery features.
        metric: ``cosine`` (1 - cosine similarity of the L2-normalised features,
            in [0, 2]) or ``euclidean`` (plain L2 distance, not squared).

    Returns:
        (Q, G) float32 numpy array; computed in blocks of query rows to bound memory.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {list(METRICS)}, got {metric!r}")
    qf = torch.as_tensor(qf).float()
    gf = torch.as_tensor(gf).float().to(qf.device)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"pairwise_distance: expected (Q, D) and (G, D) features, got {tuple(qf.shape)} and {tuple(gf.shape)}"
        )
    if metric == "cosine":
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    else:
        g_sq_norm = gf.pow(2).sum(dim=1)
    out = np.empty((qf.shape[0], gf.shape[0]), dtype=np.float32)
    rows = max(1, _DISTANCE_CHUNK_ELEMENTS // max(gf.shape[0], 1))
    for start in range(0, qf.shape[0], rows):
        q = qf[start : start + rows]
        if metric == "cosine":
            block = 1 - q @ gf.T
        else:
            # |q - g|^2 = |q|^2 + |g|^2 - 2 q.g; clamped because rounding can make it slightly negative.
            block = (q.pow(2).sum(dim=1, keepdim=True) + g_sq_norm - 2 * q @ gf.T).clamp_(min=0).sqrt_()
        out[start : start + len(q)] = block.cpu().numpy()
    return out


def evaluate(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    *,
    device: str | torch.device = "cpu",
    metric: str = "cosine",
    flip: bool = False,
    ap: str = "torchreid",
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = True,
) -> dict:
    """Extract query and gallery features, compute distances and return :func:`rank_metrics`' dict.

    Args:
        model: the feature extractor, already on ``device``.
        query_loader, gallery_loader: yield ``(images, pids, camids, index)``.
        device, flip, precision, channels_last, progress: as in :func:`extract_features`.
        metric: as in :func:`pairwise_distance`.
        ap: as in :func:`rank_metrics`.
    """
    options = {"device": device, "flip": flip, "precision": precision, "channels_last": channels_last,
               "progress": progress}
    qf, q_pids, q_camids = extract_features(model, query_loader, **options)
    gf, g_pids, g_camids = extract_features(model, gallery_loader, **options)
    distmat = pairwise_distance(qf, gf, metric)
    return rank_metrics(distmat, q_pids, g_pids, q_camids, g_camids, ap=ap)
