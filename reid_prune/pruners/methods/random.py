"""random: channels chosen uniformly at random, the control every pruning comparison needs.

Same targets, allocations, surgery and fine-tuning as every other method; only the
choice of channels is random (seeded, so a run repeats exactly).
"""

from dataclasses import dataclass

from ..criteria import RandomScores
from ..options import number_range
from ..registry import Method, register
from ..schedules import OneShot


@dataclass
class Options:
    seed: int = number_range(0, 0)


register(Method(
    name="random",
    label="Random",
    description="random channels at the same budget: the control (seeded)",
    options=Options,
    build=lambda o: (RandomScores(o.seed), OneShot()),
))
