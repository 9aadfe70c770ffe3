"""reid-prune: train person re-ID feature extractors and prune them for real speed-ups."""

from .backbone import build_model
from .checkpoint import load_model, save_checkpoint

__version__ = "0.1.0"
__all__ = ["build_model", "load_model", "save_checkpoint", "prune", "__version__"]


def __getattr__(name: str):
    # Pruning pulls in torch.fx machinery; import it only when asked for.
    if name == "prune":
        from .pruners import prune

        return prune
    raise AttributeError(f"module 'reid_prune' has no attribute {name!r}")
