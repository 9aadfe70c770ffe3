"""What to cut: criteria that score or select channels (see :mod:`.base` for the interface)."""

from .base import Criterion, PruneContext, Selection, comparable, keep_top, score_groups
from .entropy import Entropy
from .magnitude import ChannelL1, GeometricMedian, L1Norm, L2Norm, RandomScores
from .reconstruction import Reconstruction
from .taylor import Taylor

__all__ = ["ChannelL1", "Criterion", "Entropy", "GeometricMedian", "L1Norm", "L2Norm", "PruneContext", "RandomScores",
           "Reconstruction", "Selection", "Taylor", "comparable", "keep_top", "score_groups"]
