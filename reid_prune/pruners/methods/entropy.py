"""Entropy: Luo & Wu, "An Entropy-based Pruning Method for CNN Compression" (arXiv 1706.05791).

Entropy of each channel's globally pooled activation over images (``bins`` = m), pruned
layer by layer in network order with ``finetune_steps`` of fine-tuning after each layer
(Sec. 3). Only the convs inside blocks, as the paper prunes the first two convs of each
ResNet-50 bottleneck.
"""

from dataclasses import dataclass

from ..criteria import Entropy
from ..options import number_range
from ..registry import Method, register
from ..schedules import LayerWise


@dataclass
class Options:
    bins: int = number_range(20, 2)
    finetune_steps: int = number_range(30, 0)


register(Method(
    name="entropy",
    label="Entropy",
    description="entropy of pooled activations over images, layer by layer (Luo & Wu 2017)",
    options=Options,
    build=lambda o: (Entropy(o.bins), LayerWise(unit="group", finetune_steps=o.finetune_steps)),
    scopes=("internal",),
    scope_note="as in the paper it prunes the convs inside each block; a residual-stream channel (a sum of "
               "several convs and the identity) has no single activation to take the entropy of. Use molchanov, "
               "haoli or fpgm for 'all'",
))
