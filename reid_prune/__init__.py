"""reid-prune: train person re-ID feature extractors and prune them for real speed-ups.

The names below are the library's front door, for notebooks and scripts::

    import reid_prune
    cfg = reid_prune.load_config("configs/demo.yaml", ["train.epochs=2"])
    summary = reid_prune.train(cfg, output="runs/notebook")
    small = reid_prune.prune(reid_prune.load_model("runs/notebook/best.pt"), "fpgm", target_macs=0.5)

Each function here checks its arguments before it does any work, as the command line checks its
flags (:mod:`reid_prune.jobs.arguments`): a mistyped keyword is named with the closest valid one,
a value of the wrong type (``target_macs=True``, a dict for a config) is refused with a TypeError
naming the argument. Jobs and pruning pull in the training loop and torch.fx machinery; they are
imported when first asked for.
"""

from importlib import import_module
from typing import Callable

from .jobs.arguments import checked, prune_keywords, pruner_keywords

__version__ = "0.1.0"


def _front(function: Callable, extra: Callable | None = None) -> Callable:
    """``function`` with its arguments checked; named as this module's, so pickle finds the checked one here."""
    wrapped = checked(function, extra=extra)
    wrapped.__module__ = __name__
    return wrapped


# name -> the module that owns it, imported on first use: importing the package does not import torch,
# so the command line's entry (reid_prune.entry) can catch a Ctrl-C while torch loads.
_LAZY = {
    "build_model": "reid_prune.backbone",
    "load_model": "reid_prune.checkpoint",
    "save_checkpoint": "reid_prune.checkpoint",
    "load_config": "reid_prune.config",
    "prune": "reid_prune.pruners",
    "get_pruner": "reid_prune.pruners",
    "train": "reid_prune.jobs.train",
    "evaluate_checkpoint": "reid_prune.jobs.evaluate",
    "prune_checkpoint": "reid_prune.jobs.prune",
    "sensitivity_checkpoint": "reid_prune.jobs.sensitivity",
    "visrank_checkpoint": "reid_prune.jobs.visrank",
    "extract_checkpoint": "reid_prune.jobs.extract",
    "export_checkpoint": "reid_prune.jobs.export",
    "import_checkpoint": "reid_prune.interop",
}
# What the functions that take **kwargs accept there, so a mistyped keyword is caught too.
_KEYWORDS = {"prune": prune_keywords, "get_pruner": pruner_keywords}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        function = _front(getattr(import_module(_LAZY[name]), name), _KEYWORDS.get(name))
        globals()[name] = function  # wrapped once: later lookups find it without coming here
        return function
    raise AttributeError(f"module 'reid_prune' has no attribute {name!r}")
