"""Evaluation: feature extraction, distances, Market-1501 rank metrics, model complexity and latency."""

from .metrics import rank_metrics, rank_metrics_loop
