"""The trainer's extension points, and the small view of the training loop that hooks may use.

Soft and regularised pruning schedules are hooks. They see the loop only through
:class:`TrainingLoop`: the model being trained, the number of epochs, a way to evaluate
and a way to rebuild the optimiser after surgery. They never read the trainer itself.

The trainer calls, in order::

    on_train_start(loop)                          once, before the first epoch of this fit()
    per batch:  loss + regularization_loss(model) -> backward
                on_after_backward(loop)           gradients exist: mask them here
                optimiser step
                on_batch_end(loop)                weights updated
    on_epoch_end(loop, epoch)                     soft zeroing, rate schedules (epoch is 0-based)

``state_dict`` / ``load_state_dict`` let ``--resume`` restore a hook's progress.
Hard removal (``finalize``) is not a trainer event: it changes the model's
shapes, so the caller runs it after ``fit()`` returns.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn


class TrainingLoop(Protocol):
    """What a hook may use of the loop that runs it."""

    @property
    def model(self) -> nn.Module:
        """The network being trained (after any surgery a hook made)."""

    @property
    def epochs(self) -> int:
        """Epochs of this fit."""

    @property
    def can_evaluate(self) -> bool:
        """Whether validation data was given."""

    def evaluate(self) -> dict[str, Any]:
        """Rank metrics (``mAP``, ``rank1``, ...) of the current model on the validation data."""

    def rebuild_optimizer(self) -> None:
        """Make a new optimiser over the model's current parameters (surgery replaced them)."""


class TrainerHook:
    """Base class with no-op events; override what a method needs."""

    def on_train_start(self, loop: TrainingLoop) -> None:
        pass

    def regularization_loss(self, model: nn.Module) -> Tensor | None:
        return None

    def on_after_backward(self, loop: TrainingLoop) -> None:
        pass

    def on_batch_end(self, loop: TrainingLoop) -> None:
        pass

    def on_epoch_end(self, loop: TrainingLoop, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
