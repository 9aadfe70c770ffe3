"""HaoLi: L1 filter norm, one-shot (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, arXiv 1608.08710).

Rules and sources (docs/pruners.md has the fidelity table):

* score s_j = sum |W_j| over the filter that writes channel j (Sec. 3.1);
* a residual stream with a projection shortcut is pruned by the shortcut's filters
  (Sec. 3.3: "the second layer of the residual block is pruned with the same filter
  index as selected by the pruning of shortcut layer"); streams without one use every
  producer's filters side by side (our choice);
* ``greedy``: kernels reading feature maps removed from an earlier layer do not count
  (Sec. 3.3); the default is the independent strategy;
* kept count floor(C (1 - rate)), the reference's ``int(out_channels * (1 - prune_prob))``.
"""

from dataclasses import dataclass

from ..criteria import L1Norm
from ..registry import Method, register
from ..schedules import OneShot


@dataclass
class Options:
    greedy: bool = False  # Li et al.'s greedy strategy: ignore kernels on maps already removed


register(Method(
    name="haoli",
    label="HaoLi",
    description="L1 norm of each filter, shortcut decides residual streams, one-shot (Li et al. 2017)",
    options=Options,
    build=lambda o: (L1Norm(shortcut_decides=True, greedy=o.greedy), OneShot()),
))
