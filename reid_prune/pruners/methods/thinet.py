"""ThiNet (Luo, Wu, Lin, ICCV 2017; Roll920/ThiNet_Code).

A channel is judged by the next layer: greedy removal of the channels whose summed
contribution to the next conv's sampled outputs is smallest (Algorithm 1), a
least-squares refit of that conv, block by block with optional fine-tuning after each
block. Only the convs inside blocks (a stream's channels have no single next layer).
"""

from ..criteria import Reconstruction
from ..criteria.reconstruction import SCOPE_NOTE, ReconstructionOptions
from ..registry import Method, register
from ..schedules import LayerWise

register(Method(
    name="thinet",
    label="ThiNet",
    description="greedy least-reconstruction-error removal judged by the next layer, with refit (Luo et al. 2017)",
    options=ReconstructionOptions,
    build=lambda o: (Reconstruction("thinet", samples_per_image=o.samples_per_image, refit=o.refit, seed=o.seed),
                     LayerWise(unit="block", finetune_steps=o.finetune_steps)),
    scopes=("internal",),
    scope_note=SCOPE_NOTE,
))
