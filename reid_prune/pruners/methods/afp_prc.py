"""AFP + PRC: Play and Prune (Singh et al., IJCAI 2019, arXiv 1905.04446).

An L1 push on each group's lowest-norm channels and threshold cuts (AFP), steered by the
validation mAP drop against the user's ``tolerance`` (PRC). The rate given to the pruner
is a cap; what is reached is in the summary (see ``schedules/afp_prc.py``).
"""

from dataclasses import dataclass

from ..criteria import ChannelL1
from ..options import at_least, option
from ..registry import Method, register
from ..schedules import PlayAndPrune


def _fraction(low_open: bool) -> dict:
    return {"check": (lambda v: 0 < v <= 1) if low_open else (lambda v: 0 <= v <= 1),
            "expect": "a fraction in (0, 1]" if low_open else "a fraction in [0, 1]"}


@dataclass
class Options:
    tolerance: float = option(2.0, check=lambda v: v > 0, expect="a number > 0 (mAP points)")
    reg: float = option(1e-4, check=at_least(0), expect="a number >= 0")
    push_fraction: float = option(0.1, **_fraction(True))
    threshold: float = option(0.05, **_fraction(True))
    threshold_step: float = option(0.05, **_fraction(False))
    patience: int = option(2, check=at_least(1), expect="an integer >= 1")


register(Method(
    name="afp_prc",
    label="AFP+PRC",
    description="L1 push on low-norm filters, threshold cuts, mAP-tolerance rate controller (Singh et al. 2019)",
    options=Options,
    build=lambda o: (ChannelL1(), PlayAndPrune(tolerance=o.tolerance, reg=o.reg, push_fraction=o.push_fraction,
                                               threshold=o.threshold, threshold_step=o.threshold_step,
                                               patience=o.patience)),
))
