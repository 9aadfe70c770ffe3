"""AutoBalanced: Auto-balanced Filter Pruning (Ding et al., AAAI 2018).

During training, every channel group g carries an L2 regulariser whose factor is
positive on the channels to prune this round (the set R: the lowest-norm channels)
and negative on the others (K), with the factors balanced so that the terms sum to
zero ("auto-balanced regularisation")::

    L_reg = sum_g sum_j theta_j ||w_j||^2,     sum_j theta_j ||w_j||^2 = 0
    theta_j = +s                               for j in R
    theta_j = -s * sum_{i in R} ||w_i||^2 / sum_{i in K} ||w_i||^2   for j in K

where ``w_j`` holds every trainable parameter that writes channel j (the producers'
filter and bias, and the affine weight and bias of every BatchNorm on the channel),
``s`` is ``strength`` and the ratio is recomputed from the current weights at every
step (held constant inside the gradient). The unimportant channels are pushed toward
zero while the important ones are strengthened, and the strengthening fades out by
itself as the unimportant channels vanish. The paper's text could not be consulted
here: this is a reconstruction from its abstract and the project notes, see
docs/pruners.md.

Schedule ("abreast advancing"): ``rounds`` rounds, all groups advancing together. The
fine-tuning epochs are split into ``rounds + 1`` parts; at the end of each of the
first ``rounds`` parts, the round's set R of every group is removed by surgery (a
share ``1/rounds`` of each group's total cut) and the next round's R is chosen; the
last part retrains without the regulariser. :meth:`finalize` completes the cut when
training stopped early.

:class:`TrainingPruner`, the base of this method and of AFP+PRC (``afp_prc.py``),
holds what regularised methods that cut during training share.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .base import PruneContext, Pruner, keep_top, register
from .groups import ChannelGroup, find_channel_groups
from .surgery import apply_plan


def channel_parameters(model: nn.Module, group: ChannelGroup) -> list[Tensor]:
    """The trainable parameters that write the group's channels, each with channels on dim 0.

    Producer weights (C, ...) and biases (C,), and the affine weight and bias (C,) of
    every norm on the group. Frozen parameters (the BNNeck's bias) are left out.
    """
    params = []
    for name in list(group.producers) + list(group.norms):
        module = model.get_submodule(name)
        for param in (module.weight, getattr(module, "bias", None)):
            if param is not None and param.requires_grad:
                params.append(param)
    return params


def channel_norms(model: nn.Module, group: ChannelGroup, p: int, channels: list[int] | None = None) -> Tensor:
    """Per-channel ``sum |w|^p`` (p = 1: L1 norm, p = 2: squared L2 norm) over :func:`channel_parameters`.

    Differentiable. Returns (group.channels,), or (len(channels),) for the listed channels only.
    """
    total = 0
    for param in channel_parameters(model, group):
        if channels is not None:
            param = param.index_select(0, torch.as_tensor(channels, device=param.device))
        rows = param.reshape(param.shape[0], -1)
        total = total + (rows.pow(2) if p == 2 else rows.abs()).sum(dim=1)
    return total


def balanced_factors(sq_norms: Tensor, unimportant: Tensor, strength: float) -> Tensor:
    """Auto-balanced L2 factors theta (channels,) for one group.

    Args:
        sq_norms: squared L2 norm of each channel's parameters, (channels,).
        unimportant: bool mask (channels,) of the channels pushed toward zero.
        strength: the factor on the unimportant channels.

    Returns:
        ``theta`` with ``theta = strength`` on unimportant channels and one negative value on
        the others, chosen so that ``(theta * sq_norms).sum() == 0`` (the kept channels get 0
        when their norms are all zero: there is nothing to strengthen).
    """
    sq_norms = sq_norms.detach()
    pushed = sq_norms[unimportant].sum()
    kept = sq_norms[~unimportant].sum()
    ratio = torch.where(kept > 0, pushed / kept.clamp_min(torch.finfo(sq_norms.dtype).tiny), 0.0)
    return torch.where(unimportant, strength, -strength * ratio)


class TrainingPruner(Pruner):
    """A method that regularises during training and cuts channels by surgery between epochs.

    Subclasses run as Trainer hooks. Cutting mid-training replaces layers, so the
    trainer's optimiser is rebuilt and the groups are found again (their names are
    stable, their widths are not).
    """

    requires = "training"

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        raise ValueError(
            f"pruning method {self.name!r} prunes during training: run `reid-prune prune --method {self.name} "
            "--finetune-epochs N`, or train with Trainer(hooks=[pruner]) and then call pruner.finalize(model)"
        )

    def find_groups(self, model: nn.Module) -> None:
        """Find the groups again at the model's current widths (after surgery or a resume)."""
        self.groups = find_channel_groups(model, scope=self.scope, **self.include)

    def cut(self, model: nn.Module, plan: Mapping[str, list[int]]) -> None:
        """Remove the channels not kept by ``plan`` and refresh the groups."""
        apply_plan(model, self.groups, plan)
        self.find_groups(model)

    def cut_in_training(self, trainer: Any, plan: Mapping[str, list[int]]) -> None:
        """:meth:`cut` the trainer's model, then give the trainer an optimiser over the new parameters."""
        self.cut(trainer.model, plan)
        trainer.rebuild_optimizer()

    def rounded_keep(self, keep: int, channels: int) -> int:
        """``keep`` raised to a multiple of ``round_to`` (never above ``channels``, never under ``min_channels``)."""
        keep = max(keep, self.min_channels)
        return min(channels, math.ceil(keep / self.round_to) * self.round_to)


@register
class AutoBalancedPruner(TrainingPruner):
    name = "autobalanced"
    options = {"rounds": 3, "strength": 1e-2}
    description = "auto-balanced L2 (+ on pruned, - on kept filters), rounds of cuts (Ding et al. 2018)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        rounds, strength = self.opts["rounds"], self.opts["strength"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"autobalanced option rounds: expected an integer >= 1, got {rounds!r}")
        if not isinstance(strength, (int, float)) or strength < 0:
            raise ValueError(f"autobalanced option strength: expected a number >= 0, got {strength!r}")
        self.total_epochs = 0
        self.start_channels: dict[str, int] = {}  # group -> width before the first round
        self.final_keep: dict[str, int] = {}  # group -> width after the last round
        self.rounds_done = 0
        self.unimportant: dict[str, list[int]] = {}  # group -> channels pushed toward zero this round
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------- schedule

    def keep_after(self, name: str, rounds: int) -> int:
        """Width of group ``name`` once ``rounds`` rounds have cut their share."""
        start = self.start_channels[name]
        if rounds >= self.opts["rounds"]:
            return self.final_keep[name]
        share = round((start - self.final_keep[name]) * rounds / self.opts["rounds"])
        return self.rounded_keep(start - share, start)

    def round_end_epoch(self, round_number: int, total: int) -> int:
        """0-based epoch after which round ``round_number`` (1-based) cuts.

        The ``total`` epochs are split into ``rounds + 1`` equal parts, the last one for
        retraining; each round gets at least one epoch while there are epochs left.
        """
        rounds = self.opts["rounds"]
        return min(total - 1, max(round_number - 1, (round_number * total) // (rounds + 1) - 1))

    def rounds_due(self, epoch: int, total: int) -> int:
        return sum(self.round_end_epoch(r, total) <= epoch for r in range(1, self.opts["rounds"] + 1))

    def channel_scores(self, model: nn.Module) -> dict[str, Tensor]:
        """L2 norm of each channel's parameters, the importance the rounds rank by."""
        with torch.no_grad():
            return {g.name: channel_norms(model, g, 2).sqrt() for g in self.groups}

    def select_round(self, model: nn.Module) -> None:
        """Choose the next round's unimportant channels: the lowest norms, as many as the round cuts."""
        self.unimportant = {}
        if self.rounds_done >= self.opts["rounds"]:
            return
        scores = self.channel_scores(model)
        for g in self.groups:
            keep = set(keep_top(scores[g.name], self.keep_after(g.name, self.rounds_done + 1)))
            self.unimportant[g.name] = [c for c in range(g.channels) if c not in keep]

    def cut_rounds(self, model: nn.Module, through: int) -> dict[str, list[int]]:
        """The plan that brings every group to its width after round ``through``.

        The current round's unimportant channels go first (they were weakened for it);
        when several rounds are due at once the rest are the lowest norms.
        """
        scores = self.channel_scores(model)
        plan = {}
        for g in self.groups:
            score = scores[g.name].clone()
            score[self.unimportant.get(g.name, [])] = -math.inf
            plan[g.name] = keep_top(score, self.keep_after(g.name, through))
        ratios = [_norm_ratio(scores[g.name], self.unimportant[g.name]) for g in self.groups
                  if self.unimportant.get(g.name) and len(self.unimportant[g.name]) < g.channels]
        self.history.append({
            "round": through,
            "channels_cut": sum(g.channels - len(plan[g.name]) for g in self.groups),
            "unimportant_norm_ratio": round(sum(ratios) / len(ratios), 6) if ratios else None,
        })
        return plan

    # ------------------------------------------------------------- trainer events

    def on_train_start(self, trainer: Any) -> None:
        self.total_epochs = trainer.train_cfg.epochs
        if not self.final_keep:
            self.setup(trainer.model)
            self.start_channels = {g.name: g.channels for g in self.groups}
            self.final_keep = dict(self.keep_counts)
            self.select_round(trainer.model)
        else:  # resumed: the model may already have lost some rounds' channels
            self.find_groups(trainer.model)

    def regularization_loss(self, model: nn.Module) -> Tensor | None:
        if not self.unimportant or self.opts["strength"] == 0:
            return None
        total = None
        for g in self.groups:
            drop = self.unimportant.get(g.name)
            if not drop:
                continue
            sq = channel_norms(model, g, 2)
            mask = torch.zeros(g.channels, dtype=torch.bool, device=sq.device)
            mask[drop] = True
            term = (balanced_factors(sq, mask, self.opts["strength"]) * sq).sum()
            total = term if total is None else total + term
        return total

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        due = self.rounds_due(epoch, self.total_epochs)
        if due > self.rounds_done:
            self.cut_in_training(trainer, self.cut_rounds(trainer.model, due))
            self.rounds_done = due
            self.select_round(trainer.model)

    def finalize(self, model: nn.Module) -> nn.Module:
        """Cut the rounds training did not reach (all of them if it never started); return ``model``."""
        if not self.final_keep:
            self.setup(model)
            self.start_channels = {g.name: g.channels for g in self.groups}
            self.final_keep = dict(self.keep_counts)
        else:
            self.find_groups(model)
        if self.rounds_done < self.opts["rounds"]:
            self.cut(model, self.cut_rounds(model, self.opts["rounds"]))
            self.rounds_done = self.opts["rounds"]
            self.unimportant = {}
        return model

    def summary(self) -> dict[str, Any]:
        """Per-round cuts, with the mean norm of the weakened channels over the kept ones when cut."""
        start = sum(self.start_channels.values())
        final = sum(self.keep_after(name, self.rounds_done) for name in self.start_channels)
        return {"reached_rate": round(1 - final / start, 6) if start else 0.0, "rounds": list(self.history)}

    def state_dict(self) -> dict[str, Any]:
        return {"start_channels": dict(self.start_channels), "final_keep": dict(self.final_keep),
                "rounds_done": self.rounds_done, "unimportant": {k: list(v) for k, v in self.unimportant.items()},
                "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.start_channels = {k: int(v) for k, v in state.get("start_channels", {}).items()}
        self.final_keep = {k: int(v) for k, v in state.get("final_keep", {}).items()}
        self.rounds_done = int(state.get("rounds_done", 0))
        self.unimportant = {k: [int(c) for c in v] for k, v in state.get("unimportant", {}).items()}
        self.history = [dict(h) for h in state.get("history", [])]


def _norm_ratio(norms: Tensor, drop: list[int]) -> float:
    """Mean norm of the channels in ``drop`` over the mean norm of the others."""
    mask = torch.zeros(len(norms), dtype=torch.bool, device=norms.device)
    mask[drop] = True
    return float(norms[mask].mean() / norms[~mask].mean().clamp_min(1e-12))
