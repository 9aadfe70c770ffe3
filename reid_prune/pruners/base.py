"""The Pruner: one registered method composed with a target, an allocation and a scope.

A method is three separate ideas (as in Torch-Pruning's split of importance from
algorithm):

* a **criterion** (:mod:`.criteria`) scores channels, higher = keep, or selects them jointly;
* a **schedule** (:mod:`.schedules`) decides when channels go: one-shot, iterative,
  layer-wise, soft (during training) or regularised (during training);
* an **allocation** (:mod:`.allocation`) decides how many channels each group keeps.

The :class:`Pruner` holds one of each, plus the :class:`~.session.PruningSession` that owns
the channel groups and does every cut. Rates are fractions PRUNED; MACs, parameter and
latency targets are fractions KEPT. A latency target is planned with a lookup table
measured on this machine and corrected by measuring the plan (:mod:`.latency_feedback`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Any, Iterable, Mapping, Sequence

from torch import Tensor, nn

from ..hooks import TrainerHook, TrainingLoop
from ..precision import ComputeSettings
from .allocation import Allocation, Target
from .budget import _bounds, budget_problem
from .criteria.base import NO_DATA, PruneContext, comparable, score_groups
from .latency import LatencyCost
from .latency_feedback import LatencyBudget
from .options import build_options
from .registry import Method, get_method
from .session import PruningSession

REQUIREMENTS = ("weights", "data", "training")


def resolve_scope(scope: str, *, budget: bool, scopes: Sequence[str]) -> str:
    """The scope ``auto`` stands for: ``all`` for a MACs, params or latency budget, ``internal`` otherwise.

    Measured on a ResNet-50 at 256x128 pruned to half its MACs (fp32, CPU, batch 16; HaoLi and
    FPGM): keeping the residual streams whole (``internal``) kept 0.69-0.75 of the latency,
    pruning them too (``all``) 0.45-0.47 (``python scripts/bench_prune.py --scope internal``
    and ``python scripts/bench_prune.py``; docs/results.md, "Pruning speed").
    A user who asks for a fraction of the cost wants the speed that goes with it, so budgets
    cut every stream the method supports. Rates and per-group rates keep ``internal``, the
    papers' setting and the names a sensitivity analysis writes. A method that supports
    only one scope gets that one. Other values are returned as they are.
    """
    if scope != "auto":
        return scope
    preferred = "all" if budget else "internal"
    return preferred if preferred in scopes else scopes[0]


class Pruner(TrainerHook):
    """A pruning method ready to run on a model.

    Args:
        method: a registered name or :class:`~.registry.Method`.
        rate: fraction of channels pruned in every selected group, in [0, 1).
        layer_rates: per-group prune fractions {group name: rate}; unnamed groups keep all channels.
        target_macs: fraction of the model's MACs to keep, e.g. 0.5 (met within 2%).
        target_params: fraction of the model's parameters to keep.
        target_latency: fraction of the model's measured latency to keep (on ``compute``, mean over
            ``latency_batch_sizes``), planned from a lookup table and corrected by measuring the plan.
        scope: ``internal`` (convs inside blocks), ``all`` (also the residual streams) or ``auto``
            (the default: ``all`` for a MACs, params or latency budget, ``internal`` for rates;
            :func:`resolve_scope`).
        include_stem, include_downsample, include_last_stage: which stream groups ``all`` may cut.
        min_channels: no group keeps fewer channels.
        round_to: kept channel counts are multiples of this (e.g. 8 for fast kernels).
        input_size: (H, W) at which MACs are counted.
        allocation: ``uniform``, ``global`` or ``layer_rates``; default: the method's own
            (``layer_rates`` when per-group rates are given).
        latency_batch_sizes: the batch sizes a latency target averages over (``eval``'s: 1 and 32).
        latency_threads: CPU threads while timing; 0 = torch's current count (what ``eval`` reports).
        latency_feedback: measured re-plans of a latency target at most; 0 trusts the prediction.
        compute: device, precision and memory format a latency target is timed in (None: the
            model's device with autocast and memory format at auto, as ``eval`` by default).
        **options: the method's options (its ``Options`` dataclass), checked by name and type.

    Exactly one of rate, layer_rates, target_macs, target_params and target_latency must be given.

    Raises:
        ValueError: a bad target, scope, allocation or option (the message names it).
    """

    def __init__(self, method: str | Method, *, rate: float | None = None,
                 layer_rates: Mapping[str, float] | None = None, target_macs: float | None = None,
                 target_params: float | None = None, target_latency: float | None = None, scope: str = "auto",
                 include_stem: bool = True, include_downsample: bool = True, include_last_stage: bool = False,
                 min_channels: int = 1, round_to: int = 1, input_size: tuple[int, int] = (256, 128),
                 allocation: str | None = None, latency_batch_sizes: Sequence[int] = (1, 32),
                 latency_threads: int = 0, latency_feedback: int = 3, compute: ComputeSettings | None = None,
                 **options: Any) -> None:
        if not isinstance(method, (str, Method)):
            raise TypeError(f"method: expected a registered name such as 'haoli' (see available()) or a Method, "
                            f"got {type(method).__name__}")
        self.method = get_method(method) if isinstance(method, str) else method
        self.name = self.method.name
        self.target = Target(rate=rate, layer_rates=dict(layer_rates) if layer_rates is not None else None,
                             macs=target_macs, params=target_params, latency=target_latency)
        scope = resolve_scope(scope, budget=self.target.is_budget, scopes=self.method.scopes)
        if scope not in self.method.scopes:
            note = f": {self.method.scope_note}" if self.method.scope_note else ""
            raise ValueError(f"pruning method {self.name!r} supports scope {' or '.join(self.method.scopes)}, "
                             f"not {scope!r}{note}")
        if min_channels < 1 or round_to < 1:
            raise ValueError(f"min_channels and round_to must be >= 1, got {min_channels} and {round_to}")
        self.options = build_options(self.method.options, options, "prune.options.")
        self.criterion, self.schedule = self.method.build(self.options)
        kind = allocation or ("layer_rates" if layer_rates is not None else self.method.allocation)
        self.allocation = Allocation(kind)
        self.allocation.check(self.target)
        if self.allocation.needs_scores and not self.criterion.rankable:
            raise ValueError(f"pruning method {self.name!r} chooses each group's channels jointly, so its scores "
                             "cannot be ranked across groups: use allocation 'uniform' or 'layer_rates'")
        self.scope = scope
        self.include = {"include_stem": include_stem, "include_downsample": include_downsample,
                        "include_last_stage": include_last_stage}
        self.min_channels, self.round_to, self.input_size = min_channels, round_to, tuple(input_size)
        self.latency = None if target_latency is None else LatencyBudget(
            target_latency, compute=compute, batch_sizes=latency_batch_sizes, threads=latency_threads,
            feedback=latency_feedback, input_size=self.input_size, min_channels=min_channels, round_to=round_to)
        self.context = PruneContext()  # data for training-time schedules whose criterion reads it
        self.session: PruningSession | None = None
        self.keep_counts: dict[str, int] = {}

    @classmethod
    def from_config(cls, prune: Any, *, input_size: tuple[int, int], compute: ComputeSettings | None = None,
                    latency_batch_sizes: Sequence[int] = (1, 32),
                    layer_rates: Mapping[str, float] | None = None) -> Pruner:
        """The pruner a :class:`~reid_prune.pruners.config.PruneConfig` describes.

        Every field of ``prune`` named like an argument of this constructor is passed by that
        name, and ``prune.options`` as the method's options; the job gives what a prune section
        does not hold (the input size, the resolved ``compute``, and ``latency_batch_sizes``
        where ``prune.latency_batch_sizes`` is null). ``layer_rates`` replaces the configured
        target (a sensitivity sweep's one-group rates).

        Raises:
            ValueError: a bad target, scope, allocation or option (the message names it).
        """
        arguments = {name for name, p in inspect.signature(cls).parameters.items() if p.kind == p.KEYWORD_ONLY
                     or p.kind == p.POSITIONAL_OR_KEYWORD}  # not **options: those are prune.options
        settings = {f.name: getattr(prune, f.name) for f in dataclasses.fields(prune) if f.name in arguments}
        settings.update(latency_batch_sizes=tuple(prune.latency_batch_sizes or latency_batch_sizes),
                        latency_threads=prune.latency_threads or 0)
        if layer_rates is not None:
            settings.update(rate=None, target_macs=None, target_params=None, target_latency=None,
                            layer_rates=layer_rates, allocation="layer_rates")
        return cls(**settings, input_size=input_size, compute=compute, **prune.options)

    def budget_params(self) -> dict[str, Any]:
        """The settings whether a target can be met depends on (besides the architecture): equal for two pruners
        of one model means one :meth:`check` answers for both."""
        return {"scope": self.scope, "include": self.include, "min_channels": self.min_channels,
                "round_to": self.round_to, "target": dataclasses.asdict(self.target), "input_size": self.input_size}

    # ---------------------------------------------------------------- what it needs

    @property
    def requires(self) -> str:
        """``training`` (runs inside fine-tuning), ``data`` (scores on batches) or ``weights``."""
        if self.schedule.trains:
            return "training"
        return "data" if self.criterion.needs_data else "weights"

    @property
    def reads(self) -> tuple[str, ...]:
        """The evaluation settings (dotted config keys, e.g. ``eval.metric``) its decisions depend on: the
        ``reads`` its criterion declares, then its schedule's, each once."""
        return tuple(dict.fromkeys(self.criterion.reads + self.schedule.reads))

    @property
    def groups(self) -> list:
        return self.session.groups if self.session is not None else []

    # ---------------------------------------------------------------- planning

    def setup(self, model: nn.Module, *, plan: bool = True) -> None:
        """Find the model's channel groups; with ``plan``, fix the keep counts when they do not depend on scores.

        ``plan=False`` is for a training schedule resumed on a partly pruned model, whose
        final widths are in its restored state.
        """
        self.session = PruningSession(model, scope=self.scope, include=self.include, input_size=self.input_size)
        if self.latency is not None:
            self.latency.prepare(model, self.session.full_cost)
        self.keep_counts = self.allocate(model) if plan and not self.allocation.needs_scores else {}

    def check(self, model: nn.Module) -> None:
        """Raise now if the target cannot be met on ``model`` (its groups, floors and costs), before any work.

        Every allocation has the same smallest widths (``min_channels`` rounded up to ``round_to``),
        so a budget is reachable for all of them or none. A latency target builds (or reads) the
        latency table here, and is reachable when its prediction is.

        Raises:
            ValueError: an unreachable budget (naming the smallest reachable fraction) or unknown group names.
        """
        self.setup(model, plan=False)
        groups, full_cost = self.session.groups, self.session.full_cost
        self.session = None  # a check leaves the pruner as it was: schedules set it up on the model they prune
        if self.target.is_budget:
            budget_problem(groups, full_cost, **self.target.budget(), latency=self.latency_cost,
                           min_channels=self.min_channels, round_to=self.round_to)
        elif self.target.layer_rates is not None:
            self.allocation.keep_counts(groups, self.target, full_cost, min_channels=self.min_channels,
                                        round_to=self.round_to)

    def planned_training_steps(self, model: nn.Module) -> int | None:
        """Optimiser steps the method trains by itself while it prunes ``model`` outside training (between its
        rounds or layers; :meth:`Schedule.planned_steps <.schedules.base.Schedule.planned_steps>`), planned on its
        architecture; None for a method that prunes during training, whose training is the fine-tuning.
        Leaves the pruner as it was."""
        if self.requires == "training":
            return None
        try:
            return self.schedule.planned_steps(self, model)
        finally:
            self.session, self.keep_counts = None, {}

    def final_counts(self, model: nn.Module) -> dict[str, int]:
        """The keep counts at the end of the schedule, fixed now: from the scores when the allocation ranks them.

        For training-time schedules that cut in rounds towards fixed widths (AutoBalanced,
        AFP+PRC's cap); call after :meth:`setup`.
        """
        if self.allocation.needs_scores:
            scores = score_groups(self.criterion, model, self.session.groups, self.context)
            self.keep_counts = self.allocate(model, scores)
        return self.keep_counts

    def allocate(self, model: nn.Module, scores: Mapping[str, Tensor] | None = None, *,
                 ranked: Mapping[str, Tensor] | None = None) -> dict[str, int]:
        """Keep counts of the current groups that meet the target, measured against the model at setup.

        ``scores``: raw criterion scores of every group (for the ``global`` allocation), made
        comparable by the criterion's normaliser; or ``ranked``: scores already comparable
        across groups (the iterative schedule's, FLOPs penalty included), ranked as they are.
        """
        session = self.session
        unchanged = session.widths() == session.start_widths
        cost = session.full_cost if unchanged else session.cost(model)
        if ranked is None and self.allocation.needs_scores:
            ranked = comparable(self.criterion, scores)

        def plan(target: Target) -> dict[str, int]:
            return self.allocation.keep_counts(session.groups, target, cost, ranked, min_channels=self.min_channels,
                                               round_to=self.round_to, latency=self.latency_cost)

        if self.latency is None:
            return plan(self.target.rescaled(session.start_widths, session.widths(), session.full_cost, cost))
        lowest = {g.name: _bounds(g.channels, self.min_channels, self.round_to) for g in session.groups}
        # Measured only on the model at setup: a plan is timed as a copy of the model it would cut.
        return self.latency.plan(model, cost, lambda aim: plan(Target(latency=aim)), lowest, measure=unchanged)

    @property
    def latency_cost(self) -> LatencyCost | None:
        """The latency table's predictions (:class:`~.latency.LatencyCost`) after setup; None without a latency target."""
        return self.latency.cost if self.latency is not None else None

    # ---------------------------------------------------------------- running

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        """Prune ``model`` in place with a one-shot, iterative or layer-wise schedule and return it.

        Methods that prune during training raise a ValueError that says how to run them.
        """
        if self.schedule.trains:
            raise ValueError(
                f"pruning method {self.name!r} prunes during training: run `reid-prune prune --method {self.name} "
                "--finetune-epochs N`, or train with Trainer(hooks=[pruner]) and then call pruner.finalize(model)"
            )
        context = context or PruneContext()
        if self.criterion.needs_data and context.data is None:
            raise ValueError(f"pruning method {self.name!r} scores channels on data: {NO_DATA}")
        return self.schedule.run(self, model, context)

    def on_train_start(self, loop: TrainingLoop) -> None:
        self.schedule.on_train_start(self, loop)

    def regularization_loss(self, model: nn.Module) -> Tensor | None:
        return self.schedule.regularization_loss(self, model)

    def on_after_backward(self, loop: TrainingLoop) -> None:
        self.schedule.on_after_backward(self, loop)

    def on_batch_end(self, loop: TrainingLoop) -> None:
        self.schedule.on_batch_end(self, loop)

    def on_epoch_end(self, loop: TrainingLoop, epoch: int) -> None:
        self.schedule.on_epoch_end(self, loop, epoch)

    def finalize(self, model: nn.Module) -> nn.Module:
        """After training-time schedules: remove what is left to remove; returns ``model``."""
        return self.schedule.finalize(self, model)

    def summary(self) -> dict[str, Any]:
        """What the run did, for ``report.json``: the allocation and the schedule's and criterion's notes."""
        latency = {"latency_budget": self.latency.summary()} if self.latency is not None else {}
        return {"allocation": self.allocation.kind, **self.schedule.summary(self), **self.criterion.summary(), **latency}

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state)


def get_pruner(method: str, **config: Any) -> Pruner:
    """A :class:`Pruner` for a registered method, e.g. ``get_pruner("fpgm", rate=0.3, scope="all")``."""
    return Pruner(method, **config)


def prune(
    model: nn.Module,
    method: str,
    *,
    rate: float | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    scope: str = "auto",
    allocation: str | None = None,
    input_size: tuple[int, int] = (256, 128),
    data: Iterable | None = None,
    inplace: bool = False,
    **options: Any,
) -> nn.Module:
    """Prune a model in one call and return the pruned model, physically smaller.

    Example::

        model = reid_prune.load_model("runs/demo/best.pt")
        small = reid_prune.prune(model, "fpgm", target_macs=0.5, input_size=(128, 64))

    The input model is left as it is and a pruned copy is returned, unless ``inplace=True``
    (which saves the copy's memory). Data-driven methods (molchanov, entropy, thinet, ...)
    need ``data``: an iterable of training batches ``(images, pids, ...)``. Methods that
    prune during training (psfp, l2, soft fpgm, autobalanced, afp_prc) raise a ValueError
    that says how to run them. ``allocation`` is ``uniform``, ``global`` or the method's
    default. ``scope="auto"`` prunes the residual streams too for a budget target (``all``)
    and keeps them whole for a rate (``internal``). ``target_latency`` keeps that fraction of
    the latency measured on this machine (:class:`Pruner` lists its settings, e.g.
    ``latency_batch_sizes``). Keyword ``options`` that are context settings (``num_batches``,
    ``device``) go to the :class:`PruneContext`; the rest are the method's options or the
    :class:`Pruner`'s.
    """
    context_keys = {f.name for f in dataclasses.fields(PruneContext) if f.init} - {"data"}
    context = PruneContext(data=data, **{k: options.pop(k) for k in list(options) if k in context_keys})
    pruner = get_pruner(method, rate=rate, target_macs=target_macs, target_params=target_params,
                        target_latency=target_latency, scope=scope, allocation=allocation, input_size=input_size,
                        **options)
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    model.eval()
    pruned = pruner.prune(model, context)
    return pruned.train(was_training)
