"""reid-prune: train person re-ID feature extractors and prune them for real speed-ups.

The names below are the library's front door, for notebooks and scripts::

    import reid_prune
    cfg = reid_prune.load_config("configs/demo.yaml", ["train.epochs=2"])
    summary = reid_prune.train(cfg, output="runs/notebook")
    small = reid_prune.prune(reid_prune.load_model("runs/notebook/best.pt"), "fpgm", target_macs=0.5)

Jobs and pruning pull in the training loop and torch.fx machinery; they are imported when first asked for.
"""

from importlib import import_module

from .backbone import build_model
from .checkpoint import load_model, save_checkpoint

__version__ = "0.1.0"

# name -> the module that owns it, imported on first use.
_LAZY = {
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
}
__all__ = ["build_model", "load_model", "save_checkpoint", *_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reid_prune' has no attribute {name!r}")
