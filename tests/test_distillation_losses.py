"""The distillation losses against values computed by hand (reid_prune/distillation.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from reid_prune.distillation import (DistillConfig, Distiller, feature_loss, feature_size, logit_loss,
                                     relational_loss)


def test_identical_student_and_teacher_give_zero_feature_and_relational_loss():
    feats = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    assert feature_loss(feats, feats.clone(), "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(feats, feats.clone(), "l2").item() == 0.0
    assert relational_loss(feats, feats.clone(), 0.1).item() == pytest.approx(0.0, abs=1e-6)
    # Ranking is all the relational loss reads: a scaled copy of a different width gives zero too.
    assert relational_loss(feats, torch.cat([3 * feats, torch.zeros(6, 2)], dim=1)).item() == pytest.approx(0, abs=1e-6)


def test_feature_loss_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # cos = 1/sqrt(2) and -1: mean of (1 - 0.7071) and 2.
    assert feature_loss(s, t, "cosine").item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 2) / 2, rel=1e-6)
    # squared differences 0, 1, 0, 9 over 4 elements
    assert feature_loss(s, t, "l2").item() == pytest.approx(10 / 4)


def _softmax(xs):
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_relational_loss_by_hand():
    t = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    s = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    tau = 0.5
    expected = 0.0
    for i in range(3):
        others = [j for j in range(3) if j != i]
        p_t = _softmax([_cos(t[i], t[j]) / tau for j in others])
        p_s = _softmax([_cos(s[i], s[j]) / tau for j in others])
        expected += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    expected /= 3
    got = relational_loss(torch.tensor(s), torch.tensor(t), tau).item()
    assert expected > 0.01
    assert got == pytest.approx(expected, rel=1e-5)


def test_logit_loss_by_hand():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    # tau 1: p_t = (3/4, 1/4), p_s = (1/2, 1/2)
    assert logit_loss(s, t, 1.0).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-6)
    # tau 2: p_t = (sqrt3, 1) / (sqrt3 + 1), times tau^2 = 4
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = a * math.log(2 * a) + (1 - a) * math.log(2 * (1 - a))
    assert logit_loss(s, t, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        feature_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        relational_loss(torch.zeros(1, 3), torch.zeros(1, 3))


class _Net(nn.Module):
    """A tiny model with the ReIDNet calling convention: (feature, logits) with with_logits=True."""

    def __init__(self, dim: int, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, dim, 3)
        self.bn = nn.BatchNorm2d(dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, x, with_logits=False):
        feat = self.bn(self.conv(x)).mean(dim=(2, 3))
        return (feat, self.classifier(feat)) if with_logits else feat


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient():
    torch.manual_seed(0)
    teacher, student = _Net(6), _Net(4)
    config = DistillConfig(feature=1.0, relational=1.0, logits=0.5)
    distiller = Distiller(teacher, config, (8, 8))
    distiller.match_student(student)
    assert feature_size(student, (8, 8)) == 4 and distiller.teacher_dim == 6
    assert distiller.projection is not None and distiller.projection.weight.shape == (6, 4)
    trainable = {id(p) for p in distiller.parameters()}
    assert trainable == {id(distiller.projection.weight)}  # the teacher is not a submodule
    before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    distiller.train()
    images = torch.randn(5, 3, 8, 8)
    feats, logits = student(images, with_logits=True)
    loss, parts = distiller.loss(images, feats, logits)
    loss.backward()
    assert set(parts) == {"distill_feature", "distill_relational", "distill_logits"}
    assert not distiller.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in distiller.teacher.parameters())
    assert student.conv.weight.grad is not None and distiller.projection.weight.grad is not None
    # BatchNorm running statistics of the teacher did not move (eval mode).
    assert all(torch.equal(before[k], v) for k, v in distiller.teacher.state_dict().items())
    # The weighted sum is what the parts say.
    expected = parts["distill_feature"] + parts["distill_relational"] + 0.5 * parts["distill_logits"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_logits_of_other_identities_are_refused():
    teacher, student = _Net(4, classes=3), _Net(4, classes=5)
    distiller = Distiller(teacher, DistillConfig(logits=1.0), (8, 8))
    distiller.match_student(student)
    assert distiller.projection is None  # same widths: no projection
    images = torch.randn(3, 3, 8, 8)
    with pytest.raises(ValueError, match="prune.distill.logits=0"):
        distiller.loss(images, *student(images, with_logits=True))
