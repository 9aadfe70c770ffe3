"""The optimiser of a training, and the module tree DDP trains through.

Split from :mod:`reid_prune.engine.trainer` so the loop's module stays short.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable

import torch
from torch import nn

from ..config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig, lr: float,
                    extra: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """Adam or SGD over the trainable parameters of ``model``, then ``extra`` ones (weight-decayed as weights).

    BN and bias parameters (1-D) get no weight decay unless ``train.decay_norms_and_biases``.
    ``extra``: parameters outside the model that train with it, e.g. a distillation projection
    (:class:`~reid_prune.distillation.Distiller`).
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 and not train.decay_norms_and_biases else decay).append(param)
    decay.extend(p for p in extra if p.requires_grad)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=train.momentum, nesterov=train.momentum > 0)


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares every parameter and buffer with it.

    DDP trains through a SyncBatchNorm version of this copy, while ``Trainer.model``
    keeps plain BatchNorm layers for checkpoints, hooks and pruning surgery: both see
    the same weights and running statistics.
    """
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)
