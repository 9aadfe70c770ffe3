"""PSFP: Progressive Soft Filter Pruning (He et al., arXiv 1808.07471; SFP, IJCAI 2018).

Soft L2-norm zeroing after every epoch (see ``l2``), with the pruned fraction growing on
the exponential curve P_t = a e^(-k t) + b, from 0 at the start to P at the end:

* ``curve="paper"`` (default): 3/4 of P after 1/8 of training, as the issue's reading of
  the paper states (the paper's text could not be read here; docs/pruners.md);
* ``curve="lab"``: P/4 after 1/8 of training, the survey authors' code
  (Anon6627/Pruning-PGP ``psfp.py``, D = 0.147).

``reset_bn_stats`` resets the zeroed channels' BN statistics, as the lab code does.
"""

from dataclasses import dataclass

from ..criteria import L2Norm
from ..options import choice
from ..registry import Method, register
from ..schedules import Soft, exponential_curve

SHARE_AT_ONE_EIGHTH = {"paper": 3 / 4, "lab": 1 / 4}


@dataclass
class Options:
    curve: str = choice("paper", *SHARE_AT_ONE_EIGHTH)
    mask_gradients: bool = False
    reset_bn_stats: bool = True


register(Method(
    name="psfp",
    label="PSFP",
    description="soft L2-norm zeroing with a progressive exponential rate (He et al. 2018)",
    options=Options,
    build=lambda o: (L2Norm(), Soft(curve=exponential_curve(SHARE_AT_ONE_EIGHTH[o.curve]),
                                    mask_gradients=o.mask_gradients, reset_bn_stats=o.reset_bn_stats)),
))
