"""The trainer's extension points. Soft and regularised pruners implement them.

The trainer calls, in order::

    on_train_start(trainer)                       once, before the first epoch of this fit()
    per batch:  loss + regularization_loss(model) -> backward
                on_after_backward(trainer)        gradients exist: mask them here
                optimiser step
                on_batch_end(trainer)             weights updated: re-apply masks here
    on_epoch_end(trainer, epoch)                  soft zeroing, rate schedules (epoch is 0-based)

``state_dict`` / ``load_state_dict`` let ``--resume`` restore a hook's progress.
Hard removal (``finalize``) is not a trainer event: it changes the model's
shapes, so the caller runs it after ``fit()`` returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainerHook:
    """Base class with no-op events; override what a method needs."""

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def regularization_loss(self, model: nn.Module) -> Tensor | None:
        return None

    def on_after_backward(self, trainer: Trainer) -> None:
        pass

    def on_batch_end(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
