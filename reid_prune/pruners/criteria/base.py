"""What to cut: the Criterion interface, top-k selection, and the normalisation used to rank across groups.

A criterion scores every channel of every group (higher = keep)::

    scores(model, groups, context) -> {group name: (channels,) tensor}

and selects the channels each group keeps for given keep counts. Most criteria select
the top scores of each group independently (:meth:`Criterion.select`); criteria that
choose channels jointly (ThiNet, Channel Pruning, HaoLi's greedy variant) override
``select`` and may return a ``refit`` that adjusts the network after the cut.

Data-driven scores are averaged over the ranks of a torchrun job before any decision
(:func:`reduced`), so every rank removes the same channels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ContextManager

import torch
from torch import Tensor, nn

from ...distributed import all_reduce_mean
from ...precision import autocast_context
from ..groups import ChannelGroup

NORMALIZERS = ("l2", "mean", "max", "none")
NO_DATA = ("pass data= (training batches of (images, pids, ...)) to reid_prune.prune, or use reid-prune prune, "
           "which reads the config's training split")


@dataclass
class PruneContext:
    """What data-driven and training-coupled methods may use besides the weights.

    Attributes:
        data: training batches ``(images (B, 3, H, W), pids (B,), ...)``, e.g. the P x K loader.
        num_batches: how many batches of ``data`` a criterion reads.
        device: where scoring runs.
        loss_fn: ``loss_fn(model, images, pids) -> scalar``; defaults to the batch-hard triplet loss.
        finetune: ``finetune(model, steps) -> model`` trains in place between pruning rounds,
            continuing the training stream where the previous call stopped.
        evaluate: ``evaluate(model) -> {"mAP": ..., ...}`` on validation data.
        precision: the autocast precision of criteria's forward passes (``fp32``, ``bf16``,
            ``fp16``, or a ``train.amp`` setting); the prune job passes the run's.
    """

    data: Iterable | None = None
    num_batches: int = 8
    device: torch.device | str = "cpu"
    loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    finetune: Callable[[nn.Module, int], nn.Module] | None = None
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None
    precision: str = "fp32"
    _cache: list[tuple[Tensor, Tensor]] | None = field(default=None, init=False, repr=False)

    def batches(self, who: str) -> list[tuple[Tensor, Tensor]]:
        """Up to ``num_batches`` (images, pids) pairs on ``device``; errors name ``who`` asked for them.

        The batches are read once and kept, so every group and every round of a schedule is
        scored on the same images.
        """
        if self._cache is not None:
            return self._cache
        if self.data is None:
            raise ValueError(f"{who} scores channels on data: {NO_DATA}")
        out = []
        for batch in self.data:
            images, pids = batch[0], batch[1]
            out.append((images.to(self.device), torch.as_tensor(pids).to(self.device)))
            if len(out) >= self.num_batches:
                break
        if not out:
            raise ValueError(f"{who}: the data source yielded no batches")
        self._cache = out
        return out

    def autocast(self) -> ContextManager:
        """The context a criterion's forward passes run in: the run's precision on ``device``."""
        return autocast_context(self.device, self.precision)

    def loss(self, model: nn.Module, images: Tensor, pids: Tensor) -> Tensor:
        """The loss on one batch, its forward pass under :meth:`autocast` (the loss itself in fp32)."""
        from ...losses import batch_hard_triplet_loss

        with self.autocast():
            if self.loss_fn is not None:
                return self.loss_fn(model, images, pids).float()
            features = model(images)
        return batch_hard_triplet_loss(features.float(), pids)


@dataclass
class Selection:
    """The outcome of selecting channels: a plan, and what to do to the network after the cut.

    Attributes:
        plan: {group name: sorted indices of the channels to KEEP}.
        refit: called with the pruned model right after surgery (ThiNet and Channel Pruning
            rewrite the consumer's weights by least squares); None for most criteria.
        info: per-group diagnostics for the method's summary.
    """

    plan: dict[str, list[int]]
    refit: Callable[[nn.Module], None] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Criterion:
    """Scores channels; higher = more important. Subclasses implement :meth:`scores`.

    Class attributes:
        name: short label for reports.
        needs_data: scores read ``context.batches`` (then they are rank-averaged).
        normalizer: how :func:`normalized` makes one group's scores comparable with another's
            when channels are ranked across groups (the ``global`` allocation, the iterative
            schedule): ``mean`` (divide by the group's mean score: Torch-Pruning's default
            for global pruning), ``l2`` (divide by the group's L2 norm: Molchanov et al.
            2017), ``max``, or ``none`` (scores already comparable).
        rankable: False for criteria whose scores are only an order inside a group (ThiNet's
            removal step); the ``global`` allocation refuses them.
        reads: dotted config keys of evaluation settings (``eval.metric``, ``eval.flip``,
            ``eval.ap``, ``model.retrieval_feature``) the scores depend on; none by default.
            The bench keeps these at their real values in a pruned cell's cache key (they
            otherwise only change how a finished model is scored).
    """

    name: str = ""
    needs_data: bool = False
    normalizer: str = "mean"
    rankable: bool = True
    reads: tuple[str, ...] = ()

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        raise NotImplementedError

    def begin(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> None:
        """Called once before a schedule selects in ``groups`` (the groups it will cut); stateless by default."""

    def select(self, model: nn.Module, groups: Sequence[ChannelGroup], counts: Mapping[str, int],
               context: PruneContext, scores: Mapping[str, Tensor] | None = None) -> Selection:
        """Keep the ``counts[g]`` highest-scoring channels of each group (ties: lower index).

        ``scores``: already computed :func:`score_groups` on this network, to avoid scoring twice.
        """
        scores = scores if scores is not None else score_groups(self, model, groups, context)
        return Selection({g.name: keep_top(scores[g.name], counts[g.name]) for g in groups})

    def summary(self) -> dict[str, Any]:
        """Diagnostics for the prune report; none by default."""
        return {}


def score_groups(criterion: Criterion, model: nn.Module, groups: Sequence[ChannelGroup],
                 context: PruneContext) -> dict[str, Tensor]:
    """The criterion's scores (float64, CPU), averaged over torchrun ranks when they come from data."""
    scores = {k: v.detach().double().cpu() for k, v in criterion.scores(model, groups, context).items()}
    return reduced(scores) if criterion.needs_data else scores


def reduced(values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rank-averaged copies of data-driven statistics (identity in a single process)."""
    return all_reduce_mean(dict(values))  # type: ignore[return-value]


def keep_top(scores: Tensor, count: int) -> list[int]:
    """Sorted indices of the ``count`` largest scores; equal scores keep the lower index."""
    order = torch.argsort(scores.detach().double().cpu(), descending=True, stable=True)
    return sorted(order[:count].tolist())


def comparable(criterion: Criterion, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every group's scores normalised by the criterion's rule, so channels can be ranked across groups.

    Raises:
        ValueError: the criterion's scores only order channels inside a group.
    """
    if not criterion.rankable:
        raise ValueError(f"{criterion.name} scores only order the channels inside one group, so they cannot be "
                         "ranked across groups: use allocation 'uniform' or 'layer_rates'")
    return {name: normalized(value, criterion.normalizer) for name, value in scores.items()}


def normalized(scores: Tensor, how: str) -> Tensor:
    """One group's scores scaled so groups can be ranked together (see :attr:`Criterion.normalizer`)."""
    scores = scores.double()
    if how == "none":
        return scores
    scale = {"l2": scores.norm(), "mean": scores.abs().mean(), "max": scores.abs().max()}[how]
    return scores / scale.clamp_min(torch.finfo(torch.float64).tiny)


def group_filters(model: nn.Module, group: ChannelGroup, producers: Sequence[str] | None = None) -> Tensor:
    """The filters that write the group's channels: (channels, n), every producer's weights side by side."""
    names = group.producers if producers is None else producers
    mats = [model.get_submodule(name).weight.detach().flatten(1) for name in names]
    return torch.cat(mats, dim=1) if len(mats) > 1 else mats[0]
