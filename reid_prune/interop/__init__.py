"""Models trained elsewhere: torchreid, fast-reid and reid-strong-baseline ResNets as ReIDNet checkpoints.

``import_checkpoint(path, source="torchreid")`` reads another tool's file with weights only, maps
its ResNet-18/34/50 re-ID model onto :class:`~reid_prune.backbone.ReIDNet` (trunk, stem, last stride,
pooling, BNNeck, embedding, classifier) and writes a reid-prune checkpoint that ``eval``, ``prune``
and ``export`` take like any other. What it cannot map it refuses in one line, naming the keys.
See docs/interop.md.
"""

from .importer import ImportedModel, import_checkpoint
from .sources import SOURCES

__all__ = ["SOURCES", "ImportedModel", "import_checkpoint"]
