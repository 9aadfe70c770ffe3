"""The training loop: :class:`Trainer`, the learning-rate schedule and short fine-tuning between pruning rounds.

Jobs (:mod:`reid_prune.jobs`) build the data and the model and hand them to the loop; hooks
(:mod:`reid_prune.hooks`) such as training-time pruners ride along.
"""

from .trainer import NonFiniteError, Trainer, evaluate_with_config

__all__ = ["NonFiniteError", "Trainer", "evaluate_with_config"]
