"""Structured pruning: channel groups, surgery, budgets and the pruning methods behind one interface.

    >>> from reid_prune.pruners import available, get_pruner
    >>> pruner = get_pruner("fpgm", rate=0.3, scope="all")
    >>> small = pruner.prune(model)            # physically smaller, same class of module
"""

from . import afp_prc, autobalanced, channel_pruning, entropy, fpgm, haoli, molchanov, psfp, thinet  # noqa: F401  (registration)
from .base import PLANNED, PruneContext, Pruner, SoftPruner, available, get_pruner, prune, pruner_class, register

__all__ = ["PLANNED", "PruneContext", "Pruner", "SoftPruner", "available", "get_pruner", "prune", "pruner_class",
           "register"]
