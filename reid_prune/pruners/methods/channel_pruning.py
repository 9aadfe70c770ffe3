"""Channel Pruning (He, Zhang, Sun, ICCV 2017; ethanhe42/channel-pruning ``lib/decompose.py``).

LASSO regression (with an intercept, as the reference's scikit-learn ``Lasso``) of the
next conv's sampled outputs on each channel's contribution, at the penalty that leaves
the kept count; then a least-squares refit of that conv, block by block. Only the convs
inside blocks (a stream's channels have no single next layer).
"""

from ..criteria import Reconstruction
from ..criteria.reconstruction import SCOPE_NOTE, ReconstructionOptions
from ..registry import Method, register
from ..schedules import LayerWise

register(Method(
    name="channel_pruning",
    label="Channel Pruning",
    description="LASSO channel selection on next-layer contributions, least-squares reconstruction (He et al. 2017)",
    options=ReconstructionOptions,
    build=lambda o: (Reconstruction("lasso", samples_per_image=o.samples_per_image, refit=o.refit, seed=o.seed),
                     LayerWise(unit="block", finetune_steps=o.finetune_steps)),
    scopes=("internal",),
    scope_note=SCOPE_NOTE,
))
