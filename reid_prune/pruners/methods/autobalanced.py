"""AutoBalanced: Auto-balanced Filter Pruning (Ding et al., AAAI 2018).

During fine-tuning, a balanced L2 regulariser graded by each channel's L1 norm against
the round's threshold pushes the channels to be pruned toward zero and strengthens the
others; every group is cut abreast in ``rounds`` rounds (see ``schedules/autobalanced.py``).
"""

from dataclasses import dataclass

from ..criteria import ChannelL1
from ..options import number_range
from ..registry import Method, register
from ..schedules import AutoBalanced


@dataclass
class Options:
    rounds: int = number_range(3, 1)
    strength: float = number_range(5e-4, 0)  # alpha of the reimplementation


register(Method(
    name="autobalanced",
    label="AutoBalanced",
    description="auto-balanced graded L2 (+ on pruned, - on kept filters), rounds of cuts (Ding et al. 2018)",
    options=Options,
    build=lambda o: (ChannelL1(), AutoBalanced(rounds=o.rounds, strength=o.strength)),
))
