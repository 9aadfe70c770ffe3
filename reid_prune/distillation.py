"""Knowledge distillation from a frozen teacher while a pruned student fine-tunes.

N is the batch size, D_s and D_t the student's and teacher's feature sizes, C the
number of training identities. Every loss reads the *metric feature*: what
``model(x, with_logits=True)`` returns first, the pooled feature before the BNNeck
that the triplet loss also reads (the retrieval feature after the neck is a
per-channel affine map of it at inference). Three losses, each with its weight:

* :func:`feature_loss`: the student's feature against the teacher's, one row at a
  time (cosine: ``1 - cos``; ``l2``: mean squared difference per element), after a
  learned linear projection D_s -> D_t when the sizes differ (FitNets' "regressor",
  Romero et al. 2015).
* :func:`relational_loss`: per anchor, the KL divergence between the teacher's and the
  student's softmax over the cosine similarities to the other N - 1 images of the
  batch (temperature ``tau``): it transfers the ranking, which is what re-ID scores.
  The similarity-distribution form follows Park et al. 2019 ("Relational Knowledge
  Distillation") in spirit and fast-reid's ``projects/FastDistill``; the exact form
  here (softmax over cosine / tau, self-pairs left out, mean over anchors) is ours.
* :func:`logit_loss`: Hinton et al. 2015, ``tau^2 KL(softmax(t/tau) || softmax(s/tau))``,
  when the teacher's classifier covers the same identities.

The re-ID losses stay on: :class:`Distiller` only adds its weighted sum to them.
The teacher is frozen (no parameter requires grad), kept in eval mode and run under
``torch.no_grad``: it never trains and its BatchNorm statistics never move.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config_fields import choice, number_range
from .precision import ComputeSettings

FEATURE_METRICS = ("cosine", "l2")


@dataclass
class DistillConfig:
    """``prune.distill``: the teacher and the weight of each loss (a weight of 0 turns that loss off)."""

    # A checkpoint (e.g. a larger network); null = the unpruned source model the job is pruning.
    teacher: str | None = None
    feature: float = number_range(1.0, 0)
    feature_metric: str = choice("cosine", *FEATURE_METRICS)
    relational: float = number_range(1.0, 0)
    relational_temperature: float = number_range(0.1, 0, low_open=True)
    # Needs the teacher's classifier to cover the student's identities (same training data).
    logits: float = number_range(0.0, 0)
    logits_temperature: float = number_range(4.0, 0, low_open=True)


def _pair(student: Tensor, teacher: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if student.shape != teacher.shape or student.dim() != 2:
        raise ValueError(f"{what}: expected student and teacher of the same shape (N, D), got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    return student.float(), teacher.float()


def feature_loss(student: Tensor, teacher: Tensor, metric: str = "cosine") -> Tensor:
    """Mean over the N rows of ``1 - cos(s_i, t_i)`` (``cosine``) or of ``|s_i - t_i|^2 / D`` (``l2``).

    Args:
        student, teacher: (N, D) features (the student's already projected to the teacher's size).
    Returns:
        A float32 scalar; 0 when the features are equal (cosine: when they point the same way).
    """
    student, teacher = _pair(student, teacher, "feature_loss")
    if metric == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
    if metric == "l2":
        return F.mse_loss(student, teacher)
    raise ValueError(f"prune.distill.feature_metric: expected one of {list(FEATURE_METRICS)}, got {metric!r}")


def _similarity_logits(feats: Tensor, tau: float) -> Tensor:
    """(N, N - 1): cosine similarities of each row to every other row, divided by ``tau``."""
    unit = F.normalize(feats, dim=1)
    sims = unit @ unit.T / tau
    n = len(feats)
    others = ~torch.eye(n, dtype=torch.bool, device=feats.device)
    return sims[others].view(n, n - 1)


def relational_loss(student: Tensor, teacher: Tensor, tau: float = 0.1) -> Tensor:
    """Mean over anchors of ``KL(p_t(i) || p_s(i))``, ``p(i) = softmax_j≠i(cos(f_i, f_j) / tau)``.

    Args:
        student: (N, D_s) features; teacher: (N, D_t) features (the sizes may differ: only
            similarities inside each batch are compared). N must be at least 2.
    Returns:
        A float32 scalar, 0 when the two similarity distributions agree for every anchor.
    """
    if student.dim() != 2 or teacher.dim() != 2 or len(student) != len(teacher) or len(student) < 2:
        raise ValueError(f"relational_loss: expected (N, D_s) and (N, D_t) features with N >= 2, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    log_s = F.log_softmax(_similarity_logits(student.float(), tau), dim=1)
    log_t = F.log_softmax(_similarity_logits(teacher.float(), tau), dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


def logit_loss(student: Tensor, teacher: Tensor, tau: float = 4.0) -> Tensor:
    """``tau^2`` times the mean over rows of ``KL(softmax(t / tau) || softmax(s / tau))`` (Hinton et al. 2015).

    Args:
        student, teacher: (N, C) identity logits over the same C identities.
    """
    student, teacher = _pair(student, teacher, "logit_loss")
    log_s = F.log_softmax(student / tau, dim=1)
    log_t = F.log_softmax(teacher / tau, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * tau * tau


def freeze(teacher: nn.Module) -> nn.Module:
    """A frozen copy of ``teacher``: eval mode, no parameter requiring grad (the original is untouched)."""
    frozen = copy.deepcopy(teacher)
    frozen.eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    return frozen


class Distiller(nn.Module):
    """The distillation term of a fine-tuning: ``loss(images, feats, logits) -> (weighted sum, parts)``.

    Args:
        teacher: the teacher network (copied and frozen here; ``teacher(x, with_logits=True)``
            must give ``(feature (N, D_t), logits (N, C) or None)``).
        config: the loss weights and temperatures.
        input_size: (H, W) of the images in pixels: feature sizes are read from a probe forward.

    :meth:`match_student` must see the student before training (the trainer calls it whenever it
    builds an optimiser): when the student's feature size D_s differs from the teacher's D_t, a
    learned ``Linear(D_s, D_t)`` projection serves the feature loss; it trains with the student
    and is saved in its checkpoint (:meth:`extra_state_dict`). Only the projection has trainable
    parameters; the teacher is held outside the module tree, so ``state_dict``, ``.to()`` and
    the optimiser never see it.
    """

    def __init__(self, teacher: nn.Module, config: DistillConfig, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.config, self.input_size = config, tuple(input_size)
        self._teacher = [freeze(teacher)]  # a list: not a submodule, so not trained, saved or moved by .to()
        self.teacher_dim = feature_size(self.teacher, self.input_size)
        self.student_dim: int | None = None
        self.projection: nn.Linear | None = None

    def match_student(self, student: nn.Module) -> None:
        """Read the student's feature size; make a new projection when it changed and one is needed.

        Surgery that cuts the last stage's channels changes D_s: the old projection cannot serve
        the new width, so it starts afresh (seeded by the caller's random state).
        """
        dim = feature_size(student, self.input_size)
        if dim == self.student_dim:
            return
        self.student_dim = dim
        self.projection = (nn.Linear(dim, self.teacher_dim, bias=False)
                           if self.config.feature > 0 and dim != self.teacher_dim else None)
        if self.projection is not None:
            self.projection.to(next(student.parameters()).device)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def place(self, compute: ComputeSettings) -> None:
        """Put the teacher where the student runs (device, memory format) and the projection on the device.

        The teacher then runs under the student's autocast: in the run's precision.
        """
        self._teacher[0] = compute.place(self.teacher)
        self.to(compute.device)

    def loss(self, images: Tensor, feats: Tensor, logits: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        """The weighted distillation loss for one batch and its parts (``distill_feature`` ...).

        Args:
            images: (N, 3, H, W), as the student saw them; feats: the student's (N, D_s) metric
                features; logits: its (N, C) identity logits or None.
        """
        cfg = self.config
        if self.student_dim is None:
            raise ValueError("Distiller: call match_student(model) before computing its loss")
        if feats.shape[1] != self.student_dim:
            raise ValueError(f"Distiller: the student's features have {feats.shape[1]} channels, but match_student "
                             f"saw {self.student_dim}: call match_student(model) after surgery")
        self.teacher.eval()  # a caller's model.train() must never reach the teacher
        with torch.no_grad():
            t_feats, t_logits = self.teacher(images, with_logits=True)
        total = feats.new_zeros((), dtype=torch.float32)
        parts: dict[str, float] = {}
        if cfg.feature > 0:
            projected = self.projection(feats.float()) if self.projection is not None else feats
            value = feature_loss(projected, t_feats, cfg.feature_metric)
            total, parts["distill_feature"] = total + cfg.feature * value, float(value.detach())
        if cfg.relational > 0:
            value = relational_loss(feats, t_feats, cfg.relational_temperature)
            total, parts["distill_relational"] = total + cfg.relational * value, float(value.detach())
        if cfg.logits > 0:
            if logits is None or t_logits is None or logits.shape != t_logits.shape:
                raise ValueError(
                    "prune.distill.logits: the teacher's and the student's classifiers must cover the same "
                    f"identities (got {None if t_logits is None else tuple(t_logits.shape)} and "
                    f"{None if logits is None else tuple(logits.shape)}); set prune.distill.logits=0")
            value = logit_loss(logits, t_logits, cfg.logits_temperature)
            total, parts["distill_logits"] = total + cfg.logits * value, float(value.detach())
        return total, parts

    def extra_state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the projection's weights (None without one)."""
        return {"projection": None if self.projection is None else self.projection.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state_dict` (after :meth:`match_student` saw the resumed model)."""
        if self.student_dim is None:
            raise ValueError("Distiller: call match_student(model) before loading its state")
        if (state.get("projection") is None) != (self.projection is None):
            raise ValueError("--resume: the checkpoint's distillation projection does not match this run's "
                             "(prune.distill changed); resume with the run's own config")
        if self.projection is not None:
            self.projection.load_state_dict(state["projection"])


def feature_size(model: nn.Module, input_size: tuple[int, int]) -> int:
    """D of ``model``'s metric feature, read from one forward of two blank (2, 3, H, W) images in eval mode.

    The model's train/eval mode is restored; ``input_size`` is (H, W) in pixels.
    """
    was_training = model.training
    param = next(model.parameters())
    model.eval()
    try:
        with torch.no_grad():
            feats, _ = model(torch.zeros(2, 3, *input_size, device=param.device, dtype=param.dtype),
                             with_logits=True)
    finally:
        model.train(was_training)
    return int(feats.shape[1])
