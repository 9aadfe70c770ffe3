"""The teacher of a distilled fine-tuning (``prune.distill``): the unpruned source model, or a checkpoint.

Built by the prune job before the pruning starts, so every training after the source
(the method's own steps between rounds or layers, a soft schedule's epochs and the
fine-tuning) distils from the same frozen network. See :mod:`reid_prune.distillation`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..config import Config
from ..distillation import Distiller


def check_distill(cfg: Config, trains: bool, other_data: bool = False) -> None:
    """Refuse a ``prune.distill`` that cannot work or would do nothing, before any data is read.

    ``trains``: the job trains at all after the source; ``other_data``: the pruning reads other data
    than the fine-tuning (``prune_data``), whose identities no single classifier covers.
    """
    d = cfg.prune.distill
    if d is None:
        return
    if d.teacher is not None and not Path(d.teacher).is_file():
        raise FileNotFoundError(f"prune.distill.teacher: checkpoint {d.teacher!r} does not exist; give a best.pt or "
                                "pruned.pt written by reid-prune, or leave it out to distil from the unpruned model")
    if d.logits > 0 and other_data:
        raise ValueError("prune.distill.logits: the pruning data and the fine-tuning data have different identities, "
                         "so no one classifier of the teacher covers both; set prune.distill.logits=0")
    if not (d.feature > 0 or d.relational > 0 or d.logits > 0):
        raise ValueError("prune.distill: every loss weight (feature, relational, logits) is 0, so nothing would be "
                         "distilled; give one a weight above 0, or leave prune.distill out (no --distill)")
    if not trains:
        raise ValueError("prune.distill: distillation acts while the pruned model trains, and this job trains "
                         "nothing after the cut; add --finetune-epochs N or --train-steps N")


def build_distiller(cfg: Config, source: nn.Module, student_classes: int) -> Distiller | None:
    """The job's :class:`~reid_prune.distillation.Distiller`, or None without ``prune.distill``.

    Args:
        cfg: the run config (``prune.distill``; ``data.height`` and ``data.width`` for the probe forward).
        source: the unpruned model, the teacher unless ``prune.distill.teacher`` names a checkpoint
            (it is copied: pruning ``source`` afterwards leaves the teacher whole).
        student_classes: identities of the student's classifier while it trains; with a logits
            weight the teacher's classifier must cover as many.

    Raises:
        FileNotFoundError, ValueError: an unreadable teacher checkpoint, or logits distillation
            from a classifier over other identities (each message names the fix).
    """
    d = cfg.prune.distill
    if d is None:
        return None
    teacher = source
    if d.teacher is not None:
        teacher = model_from_checkpoint(read_checkpoint(d.teacher))
    classifier = getattr(teacher, "classifier", None)
    teacher_classes = classifier.out_features if isinstance(classifier, nn.Linear) else 0
    if d.logits > 0 and teacher_classes != student_classes:
        whose = f"the teacher {d.teacher!r}" if d.teacher else "the unpruned model"
        raise ValueError(f"prune.distill.logits: {whose} classifies {teacher_classes} identities but the pruned model "
                         f"trains on {student_classes}: logits can only be distilled over the same identities; set "
                         "prune.distill.logits=0 (the feature and relational losses need no classifier)")
    return Distiller(teacher, d, (cfg.data.height, cfg.data.width))
