"""l2: Soft Filter Pruning (He et al., IJCAI 2018; he-y/soft-filter-pruning ``pruning_train.py``).

Before the first and after every training epoch the filters with the smallest L2 norm are
zeroed at the full rate (the conv filters only, as the reference's ``Mask`` does) and keep
training, so they may grow back; they are removed at the end. The reference does not mask
gradients.
"""

from dataclasses import dataclass

from ..criteria import L2Norm
from ..registry import Method, register
from ..schedules import Soft


@dataclass
class Options:
    mask_gradients: bool = False  # SFP lets zeroed filters recover: no gradient masking


register(Method(
    name="l2",
    label="SFP (L2)",
    description="soft L2-norm filter pruning at the full rate every epoch (SFP, He et al. 2018)",
    options=Options,
    build=lambda o: (L2Norm(), Soft(mask_gradients=o.mask_gradients)),
))
