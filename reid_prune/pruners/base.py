"""The common Pruner interface, its registry, and the schedules that apply a criterion.

A method is two things kept apart (as in Torch-Pruning):

* a **criterion** scores every channel of every :class:`ChannelGroup` (higher = more
  important): :meth:`Pruner.group_scores`;
* a **schedule** decides when channels go: one-shot (:class:`Pruner`), soft zeroing
  during training with removal at the end (:class:`SoftPruner`), or a method's own
  iterative loop (overriding :meth:`Pruner.prune`).

Every schedule ends in the same place: a *plan* (group name -> indices of channels
to **keep**) that :func:`~reid_prune.pruners.surgery.apply_plan` carries out by
physically slicing the layers. Rates are fractions **pruned**; MAC and parameter
targets are fractions **kept**.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import Tensor, nn

from ..distributed import all_reduce_mean
from ..engine.hooks import TrainerHook
from .budget import CostModel, keep_counts_for_budget, keep_counts_for_rate
from .groups import ChannelGroup, find_channel_groups
from .surgery import apply_plan, zero_group

REQUIREMENTS = ("weights", "data", "training")


@dataclass
class PruneContext:
    """What data-driven and training-coupled methods may use besides the weights.

    Attributes:
        data: training batches ``(images (B, 3, H, W), pids (B,), ...)``, e.g. the P x K loader.
        num_batches: how many batches of ``data`` a criterion reads.
        device: where scoring runs.
        loss_fn: ``loss_fn(model, images, pids) -> scalar``; defaults to the batch-hard triplet loss.
        finetune: ``finetune(model, steps) -> model`` trains in place between pruning rounds.
        evaluate: ``evaluate(model) -> {"mAP": ..., ...}`` on validation data.
    """

    data: Iterable | None = None
    num_batches: int = 8
    device: torch.device | str = "cpu"
    loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    finetune: Callable[[nn.Module, int], nn.Module] | None = None
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None

    def batches(self, method: str) -> list[tuple[Tensor, Tensor]]:
        """Up to ``num_batches`` (images, pids) pairs on ``device``; a clear error when there is no data."""
        if self.data is None:
            raise ValueError(
                f"pruning method {method!r} scores channels on data: pass data= (training batches of "
                "(images, pids, ...)) to reid_prune.prune, or use reid-prune prune, which reads the config's "
                "training split"
            )
        out = []
        for batch in self.data:
            images, pids = batch[0], batch[1]
            out.append((images.to(self.device), torch.as_tensor(pids).to(self.device)))
            if len(out) >= self.num_batches:
                break
        if not out:
            raise ValueError(f"pruning method {method!r}: the data source yielded no batches")
        return out

    def loss(self, model: nn.Module, images: Tensor, pids: Tensor) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(model, images, pids)
        from ..losses import batch_hard_triplet_loss

        return batch_hard_triplet_loss(model(images), pids)


class Pruner(TrainerHook):
    """Base class of every pruning method: target, group selection, plan, surgery.

    Args:
        rate: fraction of channels pruned in every selected group, in [0, 1).
        layer_rates: per-group prune fractions {group name: rate}; unnamed groups keep all channels.
        target_macs: fraction of the model's MACs to keep, e.g. 0.5 (found within 2%).
        target_params: fraction of the model's parameters to keep.
        scope: ``internal`` (convs inside blocks) or ``all`` (also the residual streams).
        include_stem, include_downsample, include_last_stage: which stream groups ``all`` may cut.
        min_channels: no group keeps fewer channels.
        round_to: kept channel counts are multiples of this (e.g. 8 for fast kernels).
        input_size: (H, W) at which MACs are counted.
        **options: method-specific settings, declared in the subclass's ``options``.

    Exactly one of rate, layer_rates, target_macs and target_params must be given.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[str] = "weights"  # weights | data | training
    scopes: ClassVar[tuple[str, ...]] = ("internal", "all")
    options: ClassVar[dict[str, Any]] = {}  # option name -> default
    description: ClassVar[str] = ""

    def __init__(
        self,
        *,
        rate: float | None = None,
        layer_rates: Mapping[str, float] | None = None,
        target_macs: float | None = None,
        target_params: float | None = None,
        scope: str = "internal",
        include_stem: bool = True,
        include_downsample: bool = True,
        include_last_stage: bool = False,
        min_channels: int = 1,
        round_to: int = 1,
        input_size: tuple[int, int] = (256, 128),
        **options: Any,
    ) -> None:
        given = [k for k, v in (("rate", rate), ("layer_rates", layer_rates), ("target_macs", target_macs),
                                ("target_params", target_params)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"pruning method {self.name!r}: give exactly one of rate, layer_rates, target_macs, target_params "
                f"(got {', '.join(given) or 'none'})"
            )
        if rate is not None and not 0 <= rate < 1:
            raise ValueError(f"prune rate must be a fraction pruned in [0, 1), got {rate}")
        for key, value in (("target_macs", target_macs), ("target_params", target_params)):
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{key} must be a fraction kept in (0, 1], got {value}")
        if scope not in self.scopes:
            raise ValueError(
                f"pruning method {self.name!r} supports scope {' or '.join(self.scopes)}, not {scope!r}"
            )
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise ValueError(f"pruning method {self.name!r} has no option {unknown[0]!r}; its options: {valid}")
        self.rate, self.layer_rates = rate, dict(layer_rates) if layer_rates is not None else None
        self.target_macs, self.target_params = target_macs, target_params
        self.scope = scope
        self.include = {"include_stem": include_stem, "include_downsample": include_downsample,
                        "include_last_stage": include_last_stage}
        self.min_channels, self.round_to = min_channels, round_to
        self.input_size = tuple(input_size)
        self.opts = {**self.options, **options}
        self.groups: list[ChannelGroup] = []
        self.keep_counts: dict[str, int] = {}

    # ---------------------------------------------------------------- planning

    def setup(self, model: nn.Module) -> None:
        """Find the channel groups of ``model`` and how many channels each keeps."""
        self.groups = find_channel_groups(model, scope=self.scope, **self.include)
        if not self.groups:
            raise ValueError(f"no prunable channel groups in this model at scope {self.scope!r}")
        if self.target_macs is not None or self.target_params is not None:
            cost = CostModel(model, self.input_size)
            self.keep_counts = keep_counts_for_budget(
                self.groups, cost, target_macs=self.target_macs, target_params=self.target_params,
                min_channels=self.min_channels, round_to=self.round_to)
        else:
            names = {g.name for g in self.groups}
            if self.layer_rates is not None and set(self.layer_rates) - names:
                bad = sorted(set(self.layer_rates) - names)
                raise ValueError(f"layer_rates names unknown groups {bad[:3]}; groups are: {sorted(names)[:6]} ...")
            self.keep_counts = keep_counts_for_rate(
                self.groups, self.rate if self.rate is not None else self.layer_rates,
                min_channels=self.min_channels, round_to=self.round_to)

    def group_scores(self, model: nn.Module, context: PruneContext) -> dict[str, Tensor]:
        """Importance of every channel of every group: {group name: (channels,)}; higher is kept."""
        raise NotImplementedError

    def plan(self, scores: Mapping[str, Tensor], keep_counts: Mapping[str, int] | None = None) -> dict[str, list[int]]:
        """Keep the ``keep_counts[g]`` highest-scoring channels of each group (ties: lower index first)."""
        keep_counts = self.keep_counts if keep_counts is None else keep_counts
        return {g.name: keep_top(scores[g.name], keep_counts[g.name]) for g in self.groups}

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        """One-shot schedule: score once, cut once. Returns ``model``, physically pruned in place."""
        context = context or PruneContext()
        self.setup(model)
        scores = self.group_scores(model, context)
        return apply_plan(model, self.groups, self.plan(scores))

    def finalize(self, model: nn.Module) -> nn.Module:
        """Hard removal after training-time schedules; one-shot methods have nothing left to do."""
        return model

    # ---------------------------------------------------------------- helpers for criteria

    def group_filters(self, model: nn.Module, group: ChannelGroup) -> Tensor:
        """The filters that write the group's channels: (channels, n) with every producer's weights side by side."""
        mats = [model.get_submodule(name).weight.detach().flatten(1) for name in group.producers]
        return torch.cat(mats, dim=1) if len(mats) > 1 else mats[0]


def keep_top(scores: Tensor, count: int) -> list[int]:
    """Sorted indices of the ``count`` largest scores; equal scores keep the lower index.

    Under torchrun the scores are first averaged over the ranks, so data-driven criteria
    (which see different batches on each rank) still remove the same channels everywhere.
    """
    scores = all_reduce_mean({"scores": scores.detach().float().cpu()})["scores"]
    order = torch.argsort(scores, descending=True, stable=True)
    return sorted(order[:count].tolist())


class SoftPruner(Pruner):
    """Soft schedule (SFP, PSFP, FPGM soft): zero the lowest channels after every epoch, remove them at the end.

    Zeroing covers the conv filters *and* the BN affine parameters, so a zeroed channel
    is silent. With ``mask_gradients`` the zeroed channels also get no gradient and are
    re-zeroed after every optimiser step (momentum and weight decay would revive them);
    without it they train on and may come back at the next epoch, as in SFP.
    Subclasses give the criterion and may override :meth:`rate_at`.
    """

    requires: ClassVar[str] = "training"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.total_epochs = 0
        self.masks: dict[str, list[int]] = {}  # group name -> zeroed channel indices
        self.epochs_done = 0

    def rate_fraction_at(self, epoch: int, total: int) -> float:
        """Fraction of the final cut applied after ``epoch`` (0-based) of ``total``: 1 by default."""
        return 1.0

    def keep_counts_at(self, epoch: int, total: int) -> dict[str, int]:
        fraction = self.rate_fraction_at(epoch, total)
        counts = {}
        for g in self.groups:
            cut = g.channels - self.keep_counts[g.name]
            counts[g.name] = g.channels - int(round(fraction * cut))
        return counts

    def on_train_start(self, trainer: Any) -> None:
        if not self.groups:
            self.setup(trainer.model)
        self.total_epochs = trainer.train_cfg.epochs
        self._apply_masks(trainer.model)

    def on_epoch_end(self, trainer: Any, epoch: int) -> None:
        self.zero_lowest(trainer.model, epoch, self.total_epochs)

    def zero_lowest(self, model: nn.Module, epoch: int, total: int) -> None:
        """Recompute scores and zero each group's lowest channels for the rate due after ``epoch``."""
        scores = self.group_scores(model, PruneContext())
        counts = self.keep_counts_at(epoch, total)
        self.masks = {}
        for g in self.groups:
            keep = set(keep_top(scores[g.name], counts[g.name]))
            self.masks[g.name] = [c for c in range(g.channels) if c not in keep]
        self.epochs_done = epoch + 1
        self._apply_masks(model)

    def _apply_masks(self, model: nn.Module) -> None:
        with torch.no_grad():
            for g in self.groups:
                if self.masks.get(g.name):
                    zero_group(model, g, self.masks[g.name])
        self.after_zeroing(model)

    def after_zeroing(self, model: nn.Module) -> None:
        """Called after each zeroing; PSFP re-initialises here."""

    def on_after_backward(self, trainer: Any) -> None:
        if self.opts.get("mask_gradients"):
            for g in self.groups:
                if self.masks.get(g.name):
                    _zero_group_grads(trainer.model, g, self.masks[g.name])

    def on_batch_end(self, trainer: Any) -> None:
        if self.opts.get("mask_gradients"):
            with torch.no_grad():
                for g in self.groups:
                    if self.masks.get(g.name):
                        zero_group(trainer.model, g, self.masks[g.name])

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove the channels of the final cut (zeroing once more at the full rate if training stopped early)."""
        if not self.groups:
            self.setup(model)
        if self.epochs_done < max(self.total_epochs, 1) or not self.masks:
            self.zero_lowest(model, max(self.total_epochs, 1) - 1, max(self.total_epochs, 1))
        plan = {g.name: [c for c in range(g.channels) if c not in set(self.masks[g.name])] for g in self.groups}
        return apply_plan(model, self.groups, plan)

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        raise ValueError(
            f"pruning method {self.name!r} prunes during training: run `reid-prune prune --method {self.name} "
            "--finetune-epochs N`, or train with Trainer(hooks=[pruner]) and then call pruner.finalize(model)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: list(v) for k, v in self.masks.items()}, "epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {k: list(v) for k, v in state.get("masks", {}).items()}
        self.epochs_done = int(state.get("epochs_done", 0))


def _zero_group_grads(model: nn.Module, group: ChannelGroup, drop: list[int]) -> None:
    index = torch.as_tensor(drop, dtype=torch.long)
    for name in list(group.producers) + list(group.norms):
        module = model.get_submodule(name)
        for param in (module.weight, getattr(module, "bias", None)):
            if param is not None and param.grad is not None:
                param.grad.index_fill_(0, index.to(param.grad.device), 0.0)


# -------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Pruner]] = {}
PLANNED = ("haoli", "molchanov", "entropy", "autobalanced", "psfp", "fpgm", "thinet", "channel_pruning", "afp_prc")


def register(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: make a Pruner subclass available by its ``name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"pruner name {cls.name!r} is empty or already registered")
    if cls.requires not in REQUIREMENTS:
        raise ValueError(f"pruner {cls.name!r}: requires must be one of {REQUIREMENTS}")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the implemented pruning methods."""
    return sorted(_REGISTRY)


def pruner_class(method: str) -> type[Pruner]:
    if method in _REGISTRY:
        return _REGISTRY[method]
    if method in PLANNED:
        raise NotImplementedError(
            f"pruning method {method!r} is not implemented yet; implemented: {', '.join(available())}"
        )
    raise ValueError(f"unknown pruning method {method!r}; valid names: {', '.join(PLANNED)}")


def get_pruner(method: str, **config: Any) -> Pruner:
    """Instantiate a registered method, e.g. ``get_pruner("fpgm", rate=0.3, scope="all")``."""
    return pruner_class(method)(**config)


def prune(
    model: nn.Module,
    method: str,
    *,
    rate: float | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    scope: str = "internal",
    input_size: tuple[int, int] = (256, 128),
    data: Iterable | None = None,
    **options: Any,
) -> nn.Module:
    """Prune a copy of ``model`` in one call and return it, physically smaller; ``model`` is left as it was.

    Example::

        model = reid_prune.load_model("runs/demo/best.pt")
        small = reid_prune.prune(model, "fpgm", target_macs=0.5, input_size=(128, 64))  # model unchanged

    (``Pruner.prune`` itself works in place, to spare the memory of a copy.)

    Data-driven methods (molchanov, entropy, thinet, ...) need ``data``: an iterable of
    training batches ``(images, pids, ...)``. Methods that prune during training (psfp,
    soft fpgm, autobalanced, afp_prc) raise a ValueError that says how to run them.
    Keyword ``options`` that are context settings (``num_batches``, ``device``) go to
    the :class:`PruneContext`; the rest are pruner settings.
    """
    context_keys = {f.name for f in dataclasses.fields(PruneContext)} - {"data"}
    context = PruneContext(data=data, **{k: options.pop(k) for k in list(options) if k in context_keys})
    pruner = get_pruner(method, rate=rate, target_macs=target_macs, target_params=target_params, scope=scope,
                        input_size=input_size, **options)
    was_training = model.training
    pruned = pruner.prune(copy.deepcopy(model).eval(), context)
    return pruned.train(was_training)
