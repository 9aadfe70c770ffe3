"""Molchanov: first-order Taylor importance, pruned iteratively with a global ranking.

2017 (Molchanov et al., ICLR 2017): per-example |Taylor| of each feature map, L2-normalised
per layer and ranked across all layers; the lowest are removed a few at a time with
fine-tuning in between until the target is met, so the ranking decides the widths (the
``global`` allocation). ``flops_penalty`` is the paper's FLOPs regularisation.
2019 (Molchanov et al., CVPR 2019; NVlabs/Taylor_pruning): squared gate gradient, no
normalisation, momentum 0.9 across pruning steps.
"""

from dataclasses import dataclass

from ..criteria import Taylor
from ..criteria.taylor import ABS_OF, VARIANTS
from ..options import choice, number_range
from ..registry import Method, register
from ..schedules import Iterative


@dataclass
class Options:
    variant: int = choice(2017, *VARIANTS)
    abs_of: str = choice("example", *ABS_OF)  # 2017: |t| per example (paper) or of the batch mean
    channels_per_step: int | None = number_range(None, 1)
    rounds: int = number_range(10, 1)  # when channels_per_step is null
    finetune_steps: int = number_range(30, 0)
    momentum: float | None = number_range(None, 0, 1, high_open=True)
    flops_penalty: float = number_range(0.0, 0)


def build(o: Options) -> tuple:
    momentum = o.momentum if o.momentum is not None else (0.9 if o.variant == 2019 else 0.0)
    return Taylor(o.variant, o.abs_of), Iterative(
        channels_per_step=o.channels_per_step, rounds=o.rounds, finetune_steps=o.finetune_steps,
        momentum=momentum, flops_penalty=o.flops_penalty)


register(Method(
    name="molchanov",
    label="Molchanov",
    description="first-order Taylor expansion on activations, iterative, global ranking (Molchanov et al. 2017, 2019)",
    options=Options,
    build=build,
    allocation="global",
))
