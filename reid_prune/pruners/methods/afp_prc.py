"""AFP + PRC: Play and Prune (Singh et al., IJCAI 2019, arXiv 1905.04446).

An L1 push on each group's lowest-norm channels and threshold cuts (AFP), steered by the
validation mAP drop against the user's ``tolerance`` (PRC). The rate given to the pruner
is a cap; what is reached is in the summary (see ``schedules/afp_prc.py``).
"""

from dataclasses import dataclass

from ..criteria import ChannelL1
from ..options import number_range
from ..registry import Method, register
from ..schedules import PlayAndPrune



@dataclass
class Options:
    tolerance: float = number_range(2.0, 0, low_open=True)
    reg: float = number_range(1e-4, 0)
    push_fraction: float = number_range(0.1, 0, 1, low_open=True)
    threshold: float = number_range(0.05, 0, 1, low_open=True)
    threshold_step: float = number_range(0.05, 0, 1)
    patience: int = number_range(2, 1)


register(Method(
    name="afp_prc",
    label="AFP+PRC",
    description="L1 push on low-norm filters, threshold cuts, mAP-tolerance rate controller (Singh et al. 2019)",
    options=Options,
    build=lambda o: (ChannelL1(), PlayAndPrune(tolerance=o.tolerance, reg=o.reg, push_fraction=o.push_fraction,
                                               threshold=o.threshold, threshold_step=o.threshold_step,
                                               patience=o.patience)),
))
