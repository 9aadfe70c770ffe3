"""Structured pruning: channel groups, surgery, budgets, and the methods behind one interface.

A method composes a criterion (what to cut), a schedule (when) and an allocation (how much
per group); see :mod:`.base`.

    >>> from reid_prune.pruners import available, get_pruner
    >>> pruner = get_pruner("fpgm", rate=0.3, scope="all")
    >>> small = pruner.prune(model)            # physically smaller, same class of module
"""

from . import methods  # noqa: F401  (registers every method)
from .allocation import ALLOCATIONS, Allocation, Target
from .base import Pruner, get_pruner, prune, resolve_scope
from .criteria import PruneContext
from .groups import SCOPES
from .latency import LatencyCost
from .registry import Method, available, get_method, register

__all__ = ["ALLOCATIONS", "Allocation", "LatencyCost", "Method", "PruneContext", "Pruner", "SCOPES", "Target", "available",
           "get_method", "get_pruner", "prune", "register", "resolve_scope"]
