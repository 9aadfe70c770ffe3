"""Metric and identity losses for re-ID training.

N is the batch size, D the feature size, C the number of training identities,
T the number of triplets. Batches are P identities x K images (``PKSampler``),
so every anchor normally has positives and negatives inside the batch.

* :func:`triplet_loss` is the survey's L_T over given (anchor, positive, negative)
  index triplets, e.g. from :func:`random_triplets`.
* :func:`batch_hard_triplet_loss` is L_TBH (Hermans et al. 2017): hardest positive
  and hardest negative of each anchor within the batch.
* :func:`cross_entropy_label_smooth` is the identity loss with label smoothing.
* :class:`ReIDLoss` combines them with weights, as the trainer uses them.

Distances and losses are computed in float32 even when features come out of
mixed-precision autocast, since squared-distance expansions lose too much in fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

METRICS = ("euclidean", "cosine")
TRIPLET_MODES = ("batch_hard", "random", "none")

# Squared distances are clamped to this before the square root: sqrt'(0) is infinite.
_SQUARED_DISTANCE_EPS = 1e-12


def pairwise_distances(feats: Tensor, metric: str = "euclidean") -> Tensor:
    """All pairwise distances between the rows of ``feats``.

    Args:
        feats: (N, D) features.
        metric: ``euclidean`` (L2 distance) or ``cosine`` (1 - cosine similarity).

    Returns:
        (N, N) float32 distances; the diagonal is zero (1e-6 for euclidean, from the clamp).
    """
    if feats.dim() != 2:
        raise ValueError(f"feats: expected shape (N, D), got {tuple(feats.shape)}")
    feats = feats.float()
    if metric == "euclidean":
        # Distances do not change under a shift; centring shrinks the norms so the
        # expansion |a|^2 + |b|^2 - 2ab cancels less precision away.
        feats = feats - feats.mean(dim=0, keepdim=True)
        squared_norms = feats.pow(2).sum(dim=1)
        squared = squared_norms[:, None] + squared_norms[None, :] - 2.0 * feats @ feats.T
        # The expansion leaves rounding noise where the distance should be exactly 0.
        itself = torch.eye(len(feats), dtype=torch.bool, device=feats.device)
        return squared.masked_fill(itself, 0.0).clamp(min=_SQUARED_DISTANCE_EPS).sqrt()
    if metric == "cosine":
        unit = F.normalize(feats, dim=1)
        return 1.0 - unit @ unit.T
    raise ValueError(f"loss.metric: expected one of {list(METRICS)}, got {metric!r}")


def _hinge(d_ap: Tensor, d_an: Tensor, margin: float | None) -> Tensor:
    """Mean of [margin + d_ap - d_an]_+ over (T,) distance pairs; softplus(d_ap - d_an) when margin is None."""
    if margin is None:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(margin + d_ap - d_an).mean()


def _zero_loss(feats: Tensor) -> Tensor:
    """A float32 zero that stays in the autograd graph of ``feats``, so ``backward()`` still works."""
    return feats.float().sum() * 0.0


def _check_pids(pids: Tensor, num_feats: int) -> None:
    if pids.dim() != 1 or pids.numel() != num_feats:
        raise ValueError(f"pids: expected shape ({num_feats},) matching feats, got {tuple(pids.shape)}")


def triplet_loss(feats: Tensor, triplets: Tensor, margin: float | None = 0.3, metric: str = "euclidean") -> Tensor:
    """Triplet loss L_T = mean over the given triplets of [m + d(a, p) - d(a, n)]_+.

    Args:
        feats: (N, D) features of the batch.
        triplets: (T, 3) int64 indices into ``feats``, rows ``[anchor, positive, negative]``.
        margin: the margin m; ``None`` for the soft margin softplus(d(a, p) - d(a, n)).
        metric: ``euclidean`` or ``cosine``.

    Returns:
        Scalar loss; a zero still attached to ``feats`` when T is 0.
    """
    if triplets.dim() != 2 or triplets.shape[1] != 3:
        raise ValueError(f"triplets: expected shape (T, 3) [anchor, positive, negative], got {tuple(triplets.shape)}")
    if triplets.dtype != torch.long:
        raise ValueError(f"triplets: expected dtype torch.int64 indices, got {triplets.dtype}")
    if len(triplets) == 0:
        return _zero_loss(feats)
    dist = pairwise_distances(feats, metric)
    anchor, positive, negative = triplets.to(dist.device).unbind(dim=1)
    return _hinge(dist[anchor, positive], dist[anchor, negative], margin)


def _positive_negative_masks(pids: Tensor) -> tuple[Tensor, Tensor]:
    """(N, N) bool masks: same identity other than the anchor itself, and different identity."""
    same = pids[:, None] == pids[None, :]
    itself = torch.eye(len(pids), dtype=torch.bool, device=pids.device)
    return same & ~itself, ~same


def random_triplets(pids: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Mine one random triplet per anchor of a P x K batch.

    Every anchor that has at least one positive (another image of its identity)
    and one negative gets one positive and one negative drawn uniformly.

    Args:
        pids: (N,) identity labels.
        generator: random source; the draws happen on its device (CPU when it is
            None and ``pids`` is on the CPU) so a seeded CPU generator gives the
            same triplets whatever device ``pids`` lives on.

    Returns:
        (T, 3) int64 ``[anchor, positive, negative]`` rows on ``pids``' device, T <= N.
    """
    if pids.dim() != 1:
        raise ValueError(f"pids: expected shape (N,), got {tuple(pids.shape)}")
    positive_mask, negative_mask = _positive_negative_masks(pids)
    device = generator.device if generator is not None else pids.device
    # The argmax of i.i.d. uniform scores over a mask is a uniform draw from the mask;
    # the masks are disjoint, so one score matrix serves positives and negatives independently.
    scores = torch.rand(len(pids), len(pids), generator=generator, device=device).to(pids.device)
    positive = torch.where(positive_mask, scores, -1.0).argmax(dim=1)
    negative = torch.where(negative_mask, scores, -1.0).argmax(dim=1)
    anchor = torch.nonzero(positive_mask.any(dim=1) & negative_mask.any(dim=1)).squeeze(1)
    return torch.stack([anchor, positive[anchor], negative[anchor]], dim=1)


def batch_hard_triplet_loss(
    feats: Tensor, pids: Tensor, margin: float | None = 0.3, metric: str = "euclidean"
) -> Tensor:
    """Batch-hard triplet loss L_TBH.

    For each anchor a: [m + max_{p: y_p = y_a, p != a} d(a, p) - min_{n: y_n != y_a} d(a, n)]_+,
    averaged over the anchors that have both a positive and a negative in the batch.

    Args:
        feats: (N, D) features.
        pids: (N,) identity labels.
        margin: the margin m; ``None`` for the soft margin softplus(d_ap - d_an).
        metric: ``euclidean`` or ``cosine``.

    Returns:
        Scalar loss; a zero still attached to ``feats`` when no anchor qualifies.
    """
    _check_pids(pids, len(feats))
    dist = pairwise_distances(feats, metric)
    positive_mask, negative_mask = _positive_negative_masks(pids.to(dist.device))
    valid = positive_mask.any(dim=1) & negative_mask.any(dim=1)
    if not bool(valid.any()):
        return _zero_loss(feats)
    hardest_positive = torch.where(positive_mask, dist, float("-inf")).amax(dim=1)
    hardest_negative = torch.where(negative_mask, dist, float("inf")).amin(dim=1)
    return _hinge(hardest_positive[valid], hardest_negative[valid], margin)


def cross_entropy_label_smooth(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Identity cross-entropy against smoothed targets (1 - eps) * onehot + eps / C (Szegedy et al. 2016).

    Args:
        logits: (N, C) classifier outputs.
        targets: (N,) int64 class indices in [0, C).
        epsilon: smoothing mass in [0, 1); 0 gives plain cross-entropy.

    Returns:
        Scalar loss, averaged over the batch.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits: expected shape (N, C), got {tuple(logits.shape)}")
    if targets.shape != (len(logits),):
        raise ValueError(f"targets: expected shape ({len(logits)},) matching logits, got {tuple(targets.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"loss.label_smoothing: expected a value in [0, 1), got {epsilon!r}")
    log_probs = F.log_softmax(logits.float(), dim=1)
    target_nll = -log_probs.gather(1, targets[:, None]).squeeze(1)
    uniform_nll = -log_probs.mean(dim=1)
    return ((1.0 - epsilon) * target_nll + epsilon * uniform_nll).mean()


class ReIDLoss(nn.Module):
    """Weighted sum of a triplet loss on the features and a label-smoothed identity loss on the logits.

    Args:
        triplet: ``batch_hard`` (L_TBH), ``random`` (L_T on one random triplet per anchor) or ``none``.
        margin: triplet margin m (ignored with ``soft_margin``).
        soft_margin: use softplus(d_ap - d_an) instead of the hinge with a margin.
        metric: ``euclidean`` or ``cosine`` distance for the triplet loss.
        triplet_weight: weight of the triplet part.
        id_weight: weight of the identity part; > 0 needs a model with a classifier.
        label_smoothing: epsilon of :func:`cross_entropy_label_smooth`.

    ``forward(feats (N, D), logits (N, C) | None, pids (N,))`` returns the weighted
    total and the unweighted parts ``{"triplet": float, "id": float}`` (0.0 for a
    part that is switched off).
    """

    def __init__(
        self,
        *,
        triplet: str = "batch_hard",
        margin: float = 0.3,
        soft_margin: bool = False,
        metric: str = "euclidean",
        triplet_weight: float = 1.0,
        id_weight: float = 0.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if triplet not in TRIPLET_MODES:
            raise ValueError(f"loss.triplet: expected one of {list(TRIPLET_MODES)}, got {triplet!r}")
        if metric not in METRICS:
            raise ValueError(f"loss.metric: expected one of {list(METRICS)}, got {metric!r}")
        if not soft_margin and margin < 0:
            raise ValueError(f"loss.margin: expected a value >= 0, got {margin!r}")
        if triplet_weight < 0 or id_weight < 0:
            raise ValueError(
                f"loss.triplet_weight and loss.id_weight must be >= 0, got {triplet_weight!r} and {id_weight!r}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing: expected a value in [0, 1), got {label_smoothing!r}")
        self.use_triplet = triplet != "none" and triplet_weight > 0
        if not self.use_triplet and id_weight == 0:
            raise ValueError(
                "loss: nothing to train: the triplet part is off (triplet='none' or triplet_weight=0) "
                "and id_weight is 0; set loss.triplet_weight or loss.id_weight above 0"
            )
        self.triplet = triplet
        self.margin = None if soft_margin else float(margin)
        self.metric = metric
        self.triplet_weight = float(triplet_weight)
        self.id_weight = float(id_weight)
        self.label_smoothing = float(label_smoothing)

    def forward(self, feats: Tensor, logits: Tensor | None, pids: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Total loss (scalar tensor) and its unweighted parts as python floats."""
        if self.id_weight > 0 and logits is None:
            raise ValueError(
                "loss.id_weight > 0 needs a classifier: set model num_classes to the number of "
                "training identities, or set loss.id_weight to 0"
            )
        total = _zero_loss(feats)
        parts = {"triplet": 0.0, "id": 0.0}
        if self.use_triplet:
            if self.triplet == "batch_hard":
                triplet = batch_hard_triplet_loss(feats, pids, self.margin, self.metric)
            else:
                # A CPU generator seeded from the global RNG: reproducible under
                # torch.manual_seed and the same triplets on every device.
                seed = int(torch.randint(0, 2**62, ()))
                generator = torch.Generator().manual_seed(seed)
                triplets = random_triplets(pids, generator=generator)
                triplet = triplet_loss(feats, triplets, self.margin, self.metric)
            total = total + self.triplet_weight * triplet
            parts["triplet"] = float(triplet.detach())
        if self.id_weight > 0:
            identity = cross_entropy_label_smooth(logits, pids, self.label_smoothing)
            total = total + self.id_weight * identity
            parts["id"] = float(identity.detach())
        return total, parts

    def extra_repr(self) -> str:
        margin = "soft" if self.margin is None else self.margin
        return (
            f"triplet={self.triplet}, margin={margin}, metric={self.metric}, "
            f"triplet_weight={self.triplet_weight}, id_weight={self.id_weight}, "
            f"label_smoothing={self.label_smoothing}"
        )
