"""When to cut: one-shot, iterative, layer-wise, soft and regularised schedules (see :mod:`.base`)."""

from .afp_prc import PlayAndPrune
from .autobalanced import AutoBalanced
from .base import OneShot, Schedule
from .iterative import Iterative
from .layerwise import LayerWise
from .soft import Soft, exponential_curve, full_rate

__all__ = ["AutoBalanced", "Iterative", "LayerWise", "OneShot", "PlayAndPrune", "Schedule", "Soft",
           "exponential_curve", "full_rate"]
