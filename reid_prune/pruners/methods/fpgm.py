"""FPGM: Filter Pruning via Geometric Median (He et al., CVPR 2019; he-y/filter-pruning-geometric-median).

Filters nearest the group's geometric median (smallest sum of Euclidean distances to the
others, on raw weights: ``get_filter_similar``) are pruned. ``mode="hard"`` cuts once;
``mode="soft"`` (the paper's setting) zeroes them before the first and after every training
epoch and removes them at the end, masking their gradients in between (the reference's
``do_grad_mask``).
"""

from dataclasses import dataclass

from ..criteria import GeometricMedian
from ..options import choice
from ..registry import Method, register
from ..schedules import OneShot, Soft


@dataclass
class Options:
    mode: str = choice("hard", "hard", "soft")
    mask_gradients: bool = True  # soft mode: zero the zeroed filters' gradients before every step


register(Method(
    name="fpgm",
    label="FPGM",
    description="distance to the geometric median, hard or soft (He et al. 2019)",
    options=Options,
    build=lambda o: (GeometricMedian(),
                     OneShot() if o.mode == "hard" else Soft(mask_gradients=o.mask_gradients)),
))
