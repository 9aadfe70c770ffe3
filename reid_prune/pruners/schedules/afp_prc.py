"""AFP + PRC: Play and Prune (Singh et al., IJCAI 2019, arXiv 1905.04446).

Two modules play against each other during the fine-tuning epochs:

* **Adaptive Filter Pruning (AFP)** minimises the number of channels. In every group
  the ``push_fraction`` of channels with the lowest L1 norm form the unimportant set
  U, and training adds the sparsity term ``lambda_t * sum_g sum_{j in U_g} ||w_j||_1``
  (``w_j``: every trainable parameter that writes channel j: the producers' filter and
  bias, the affine weight and bias of the BatchNorms on it). At the end of each epoch
  the channels of U whose L1 norm is under the weight threshold
  ``W_t * (mean L1 norm of the group's other channels)`` are removed by surgery.
* **Pruning Rate Controller (PRC)** maximises accuracy. It measures the validation mAP
  E of the unpruned model when training starts and, after each epoch's cut, the mAP
  C_t of what remains, with the drop ``d_t = E - C_t`` and the user's tolerance eps:

  - the sparsity weight follows the accuracy margin (our reconstruction of the paper's
    PRC rule, not checked against its text):
    ``lambda_{t+1} = reg * max(0, eps - d_t) / eps`` (full ``reg`` at no drop, 0 at the limit);
  - while ``d_t <= eps`` the threshold rises, ``W_{t+1} = min(1, W_t + threshold_step)``,
    so each round may cut more of U;
  - when ``d_t > eps`` it backs off: ``W = 0`` and ``lambda = 0`` (no cut, no sparsity
    term: plain fine-tuning) until the drop is back within eps, then it resumes at half
    the threshold that failed. After ``patience`` back-offs no further pruning is
    expected to fit: it stops, and the remaining epochs only fine-tune.

The user gives the tolerance instead of a rate; the rate (or MAC/parameter target)
given to the pruner is the most each group may lose (``rate=0.9`` for a loose
cap). :meth:`summary` reports the rate reached and every round. The paper's text
could not be consulted here; this is a reconstruction, see docs/pruners.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ...hooks import TrainingLoop
from ..criteria.base import keep_top, score_groups
from ..criteria.magnitude import channel_norms
from .base import Schedule, round_up

if TYPE_CHECKING:
    from ..base import Pruner


class PlayAndPrune(Schedule):
    """AFP's sparsity push and threshold cuts, steered by PRC's accuracy tolerance (options as in the module docstring)."""

    trains = True
    # PRC steers the cuts by the validation mAP (``context.evaluate``), and every evaluation setting (the
    # distance, flipped images, the AP rule, the retrieval feature) changes that number.
    reads = ("eval.metric", "eval.flip", "eval.ap", "model.retrieval_feature")

    def __init__(self, *, tolerance: float = 2.0, reg: float = 1e-4, push_fraction: float = 0.1,
                 threshold: float = 0.05, threshold_step: float = 0.05, patience: int = 2) -> None:
        self.tolerance, self.reg, self.push_fraction = tolerance, reg, push_fraction
        self.initial_threshold, self.threshold_step, self.patience = threshold, threshold_step, patience
        self.baseline: float | None = None  # validation mAP E of the unpruned model
        self.lam = 0.0  # lambda_t
        self.threshold = 0.0  # W_t, relative to the mean L1 norm of a group's other channels; 0 while backing off
        self.resume_threshold = 0.0
        self.backoffs = 0
        self.done = False
        self.start_channels: dict[str, int] = {}
        self.floor: dict[str, int] = {}  # fewest channels each group may keep (the rate cap)
        self.unimportant: dict[str, list[int]] = {}
        self.rounds: list[dict[str, Any]] = []

    # ------------------------------------------------------------- AFP

    def select_unimportant(self, pruner: Pruner, model: nn.Module) -> None:
        """U_g: the ``push_fraction`` lowest-L1 channels of each group that may still lose channels."""
        self.unimportant = {}
        if self.done or self.threshold == 0:
            return
        importance = score_groups(pruner.criterion, model, pruner.session.groups, pruner.context)
        for g in pruner.session.groups:
            count = min(math.ceil(self.push_fraction * g.channels), g.channels - self.floor[g.name])
            if count > 0:
                keep = set(keep_top(importance[g.name], g.channels - count))
                self.unimportant[g.name] = [c for c in range(g.channels) if c not in keep]

    def regularization_loss(self, pruner: Pruner, model: nn.Module) -> Tensor | None:
        if self.lam == 0 or not self.unimportant:
            return None
        total = sum(channel_norms(model, g, 1, self.unimportant[g.name]).sum()
                    for g in pruner.session.groups if g.name in self.unimportant)
        return self.lam * total

    def threshold_plan(self, pruner: Pruner, model: nn.Module) -> dict[str, list[int]]:
        """Keep lists that drop the unimportant channels under the threshold, within the rate cap."""
        plan = {}
        importance = score_groups(pruner.criterion, model, pruner.session.groups, pruner.context)
        for g in pruner.session.groups:
            drop = self.unimportant.get(g.name)
            if not drop:
                continue
            l1 = importance[g.name]
            others = torch.ones(g.channels, dtype=torch.bool)
            others[drop] = False
            limit = self.threshold * l1[others].mean()
            below = [c for c in drop if l1[c] <= limit]
            keep = round_up(max(g.channels - len(below), self.floor[g.name]), g.channels, pruner.min_channels,
                            pruner.round_to)
            if keep < g.channels:
                score = torch.full_like(l1, math.inf)  # channels over the threshold stay;
                score[below] = l1[below]  # under it, the smallest go first
                plan[g.name] = keep_top(score, keep)
        return plan

    # ------------------------------------------------------------- PRC

    def control(self, drop: float) -> str:
        """Set lambda and the threshold from this round's mAP drop; returns what the controller did."""
        within = drop <= self.tolerance
        self.lam = self.reg * max(0.0, self.tolerance - drop) / self.tolerance
        if self.threshold > 0:
            if within:
                self.threshold = min(1.0, self.threshold + self.threshold_step)
                return "raise"
            self.backoffs += 1
            self.resume_threshold = self.threshold / 2
            self.threshold = 0.0
            return "back off"
        if not within:
            return "fine-tune"
        if self.backoffs >= self.patience:
            self.done, self.lam = True, 0.0
            return "stop"
        self.threshold = self.resume_threshold
        return "resume"

    # ------------------------------------------------------------- trainer events

    def on_train_start(self, pruner: Pruner, loop: TrainingLoop) -> None:
        if not loop.can_evaluate:
            raise ValueError(
                "pruning method 'afp_prc' compares the validation mAP with a tolerance after every epoch: "
                "give the Trainer query and gallery loaders (reid-prune prune passes them)"
            )
        if self.baseline is None:
            pruner.setup(loop.model)
            self.start_channels = pruner.session.widths()
            self.floor = dict(pruner.final_counts(loop.model))
            self.baseline = float(loop.evaluate()["mAP"])
            self.lam, self.threshold = float(self.reg), float(self.initial_threshold)
            self.select_unimportant(pruner, loop.model)
        else:  # resumed
            pruner.setup(loop.model, plan=False)

    def on_epoch_end(self, pruner: Pruner, loop: TrainingLoop, epoch: int) -> None:
        if self.done:
            return
        lam, threshold = self.lam, self.threshold
        before = sum(pruner.session.widths().values())
        if threshold > 0:
            plan = self.threshold_plan(pruner, loop.model)
            if plan:
                pruner.session.cut(loop.model, plan)
                loop.rebuild_optimizer()
        remaining = sum(pruner.session.widths().values())
        mAP = float(loop.evaluate()["mAP"])
        action = self.control(self.baseline - mAP)
        if not self.done and all(g.channels <= self.floor[g.name] for g in pruner.session.groups):
            self.done, self.lam, self.threshold, action = True, 0.0, 0.0, action + ", cap reached"
        self.rounds.append({"epoch": epoch, "mAP": round(mAP, 4), "drop": round(self.baseline - mAP, 4),
                            "lambda": lam, "threshold": threshold, "channels_cut": before - remaining,
                            "channels": remaining, "action": action})
        self.select_unimportant(pruner, loop.model)

    def finalize(self, pruner: Pruner, model: nn.Module) -> nn.Module:
        """The model was cut during training; return it (refusing a run that never trained)."""
        if self.baseline is None:
            raise ValueError(
                "pruning method 'afp_prc' decides what to cut from the validation mAP during training: "
                "run Trainer(..., hooks=[pruner]).fit() (or reid-prune prune --finetune-epochs N) before finalize"
            )
        pruner.session.refresh(model)
        return model

    def summary(self, pruner: Pruner) -> dict[str, Any]:
        """The prune fraction reached over all groups and per group, the baseline mAP and every round."""
        start = sum(self.start_channels.values())
        now = pruner.session.widths() if pruner.session is not None else {}
        return {
            "reached_rate": round(1 - sum(now.values()) / start, 6) if start else 0.0,
            "group_rates": {k: round(1 - now.get(k, v) / v, 6) for k, v in self.start_channels.items()},
            "baseline_mAP": self.baseline,
            "tolerance": self.tolerance,
            "rounds": [dict(r) for r in self.rounds],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "lam": self.lam, "threshold": self.threshold,
                "resume_threshold": self.resume_threshold, "backoffs": self.backoffs, "done": self.done,
                "start_channels": dict(self.start_channels), "floor": dict(self.floor),
                "unimportant": {k: list(v) for k, v in self.unimportant.items()},
                "rounds": [dict(r) for r in self.rounds]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = None if state.get("baseline") is None else float(state["baseline"])
        self.lam, self.threshold = float(state.get("lam", 0.0)), float(state.get("threshold", 0.0))
        self.resume_threshold = float(state.get("resume_threshold", 0.0))
        self.backoffs, self.done = int(state.get("backoffs", 0)), bool(state.get("done", False))
        self.start_channels = {k: int(v) for k, v in state.get("start_channels", {}).items()}
        self.floor = {k: int(v) for k, v in state.get("floor", {}).items()}
        self.unimportant = {k: [int(c) for c in v] for k, v in state.get("unimportant", {}).items()}
        self.rounds = [dict(r) for r in state.get("rounds", [])]
