"""Evaluation: feature extraction, distances, Market-1501 rank metrics, model complexity and latency,
ranked-retrieval pictures."""

from .complexity import complexity, measure_latency, paired_latency
from .features import evaluate, extract_features, pairwise_distance
from .metrics import rank_metrics, rank_metrics_loop, ranked_gallery
from .visrank import visualize_ranked

__all__ = [
    "complexity",
    "evaluate",
    "extract_features",
    "measure_latency",
    "paired_latency",
    "pairwise_distance",
    "rank_metrics",
    "rank_metrics_loop",
    "ranked_gallery",
    "visualize_ranked",
]
