"""Learning-rate schedule as a pure function of training progress.

Computing the rate from (epoch, fraction of epoch) instead of stepping a
scheduler object keeps resume exact: nothing but the epoch number must be saved.
"""

from __future__ import annotations

import bisect
import math

from ..config import TrainConfig


def lr_at(train: TrainConfig, progress: float, *, base_lr: float | None = None, epochs: float | None = None) -> float:
    """Learning rate at ``progress`` epochs into training (0-based, fractional within an epoch).

    Linear warm-up from ``warmup_factor * lr`` to ``lr`` over ``warmup_epochs``, then
    ``multistep`` (x gamma at each milestone epoch), ``cosine`` (to 0 at the last epoch)
    or ``constant``. ``base_lr`` and ``epochs`` override the config's (for fine-tuning).
    """
    lr = train.lr if base_lr is None else base_lr
    total = train.epochs if epochs is None else epochs
    factor = 1.0
    if train.warmup_epochs > 0 and progress < train.warmup_epochs:
        factor = train.warmup_factor + (1.0 - train.warmup_factor) * progress / train.warmup_epochs
    if train.scheduler == "multistep":
        factor *= train.gamma ** bisect.bisect_right(train.milestones, int(progress))
    elif train.scheduler == "cosine" and total > 0:
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(progress / total, 1.0)))
    return lr * factor
