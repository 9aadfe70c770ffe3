"""Molchanov: first-order Taylor importance of feature maps, pruned iteratively.

**2017** (Molchanov et al., "Pruning Convolutional Neural Networks for Resource
Efficient Inference", ICLR 2017, Eq. 8 and Sec. 2.3). Removing feature map k changes
the loss by about ``a * dL/da`` summed over the map, so for image n::

    t[n, k] = (1 / M) * sum over the M positions of a[n, k] * dL/da[n, k]
    theta_k = mean over images n of |t[n, k]|            (the paper: per example, then averaged)
    score_k = theta_k / ||theta||_2                       (over the channels of the group)

The layer-wise L2 normalisation lets channels of different layers be ranked together.
``abs_of="batch"`` takes the absolute value after averaging over all images instead,
``|mean over n of t[n, k]|``, as jacobgil/pytorch-pruning does.

**2019** (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR
2019; NVlabs/Taylor_pruning ``pruning_engine.py`` method 22, "gate after BN"): a gate
of ones multiplies each BN output, and a channel scores the squared gate gradient::

    g_k = sum over images and positions of a * dL/da     (one mini-batch)
    score_k = mean over mini-batches of g_k^2,  then a momentum of 0.9 across pruning steps

with no normalisation: channels of all layers are ranked together as they are.

**Where a is read.** ``a`` is the output of the BatchNorm that follows each producer
conv (the raw producer output where no BatchNorm follows), before the ReLU. The paper
gates after the nonlinearity; with ReLU the two are the same number, element by element:
the gradient at the BN output is the gradient at the ReLU output masked to a > 0, so
``a * dL/da`` before the ReLU equals ``relu(a) * dL/d relu(a)`` after it. A dead channel
(zero filter and BN affine) has a = 0 and scores exactly 0.

**Residual streams** (scope ``all``): a stream channel is written by several producers
(each block's last conv, the shortcut conv) whose BN outputs are added. Removing the
channel zeroes all of them, so its Taylor term is the sum of theirs: one gate shared
by every BN of the group. The 2019 variant then divides the squared term by the number
of producers sharing the gate, as the reference code divides a stage's shared skip gate
by its number of blocks.

**Schedule** (both variants): repeat {score on the context's batches; remove the
``channels_per_step`` lowest channels ranked across all groups; fine-tune
``finetune_steps`` steps with ``context.finetune``} until done. The 2017 variant stops
each group at its keep count (from the rate or budget), so the final widths are exactly
the keep counts and the ranking decides the order of removal. The 2019 variant removes
the same total number of channels but lets the global ranking decide where they go;
no group goes below ``min_channels`` (nor ever to zero).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, Pruner, register
from .groups import ChannelGroup, find_channel_groups
from .surgery import apply_plan

VARIANTS = ("2017", "2019")
ABS_OF = ("example", "batch")
DEFAULT_ROUNDS = 10  # channels_per_step defaults to the total cut spread over about this many rounds


@register
class MolchanovPruner(Pruner):
    """First-order Taylor criterion on activations, iterative (Molchanov et al. 2017 / 2019).

    Options:
        variant: ``"2017"`` (per-example |Taylor|, L2-normalised per group, each group cut to its
            keep count) or ``"2019"`` (squared gate gradient, global ranking, total budget).
        abs_of: 2017 only. ``"example"``: mean over images of |t| (the paper); ``"batch"``: |mean of t|.
        channels_per_step: channels removed per round; default ceil(total cut / 10).
        finetune_steps: training steps with ``context.finetune`` between rounds (the paper: 30).
        momentum: weight of the previous round's scores, ``m * old + (1 - m) * new``; default
            0 for 2017 (scores recomputed each round, as in the paper) and 0.9 for 2019.
    """

    name = "molchanov"
    requires = "data"
    options = {"variant": "2017", "abs_of": "example", "channels_per_step": None, "finetune_steps": 30,
               "momentum": None}
    description = "first-order Taylor expansion on activations, iterative (Molchanov et al. 2017, 2019 variant)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variant = str(self.opts["variant"])
        if self.variant not in VARIANTS:
            raise ValueError(f"molchanov option variant: expected '2017' or '2019', got {self.opts['variant']!r}")
        if self.opts["abs_of"] not in ABS_OF:
            raise ValueError(f"molchanov option abs_of: expected 'example' or 'batch', got {self.opts['abs_of']!r}")
        step = self.opts["channels_per_step"]
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
            raise ValueError(f"molchanov option channels_per_step: expected an integer >= 1, got {step!r}")
        steps = self.opts["finetune_steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"molchanov option finetune_steps: expected an integer >= 0, got {steps!r}")
        momentum = self.opts["momentum"]
        if momentum is None:
            momentum = 0.9 if self.variant == "2019" else 0.0
        if not 0 <= momentum < 1:
            raise ValueError(f"molchanov option momentum: expected a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        if self.variant == "2019" and self.round_to != 1:
            raise ValueError(
                "molchanov variant 2019 ranks channels across groups, so per-group counts cannot be rounded: "
                "use round_to=1, or variant='2017' (each group cut to its rounded keep count)"
            )
        self.rounds = 0

    # ---------------------------------------------------------------- criterion

    def group_scores(self, model: nn.Module, context: PruneContext) -> dict[str, Tensor]:
        """Taylor importance of every channel of every group (float64, CPU); higher is kept."""
        sums, count = self._accumulate(model, context)
        return self._finish(sums, count)

    def _accumulate(self, model: nn.Module, context: PruneContext) -> tuple[dict[str, Tensor], Tensor]:
        """Per-group sums over the context's batches, and how many terms they add up.

        2017: sums of t[n, k] (``abs_of="batch"``) or of |t[n, k]| over images, count = images.
        2019: sums of g_k^2 over mini-batches, count = mini-batches. Sums and counts add
        across data-parallel workers, so they can be all-reduced before :meth:`_finish`.
        """
        batches = context.batches(self.name)
        sums = {g.name: torch.zeros(g.channels, dtype=torch.float64) for g in self.groups}
        count = torch.zeros((), dtype=torch.float64)
        was_training = model.training
        model.eval()  # running BN statistics stay as they are
        try:
            gated = _gated_modules(model, self.groups, batches[0][0][:1])
            for images, pids in batches:
                per_image = _taylor_terms(model, gated, lambda: context.loss(model, images, pids),
                                          spatial_mean=self.variant == "2017")
                for name, terms in per_image.items():  # terms: (images, channels)
                    if self.variant == "2019":
                        sums[name] += terms.sum(dim=0).double().cpu() ** 2
                    elif self.opts["abs_of"] == "example":
                        sums[name] += terms.abs().sum(dim=0).double().cpu()
                    else:
                        sums[name] += terms.sum(dim=0).double().cpu()
                count += 1 if self.variant == "2019" else images.shape[0]
        finally:
            model.train(was_training)
        return sums, count

    def _finish(self, sums: Mapping[str, Tensor], count: Tensor) -> dict[str, Tensor]:
        scores = {}
        for g in self.groups:
            mean = sums[g.name] / count
            if self.variant == "2019":
                scores[g.name] = mean / len(g.producers)  # producers share the stream's gate
            else:
                theta = mean.abs()
                scores[g.name] = theta / theta.norm().clamp_min(torch.finfo(theta.dtype).tiny)
        return scores

    # ---------------------------------------------------------------- schedule

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        """Iterative schedule: score, remove the globally lowest channels, fine-tune, repeat.

        Returns ``model`` (or what ``context.finetune`` returned), physically pruned, in the
        train/eval mode it came in. Scoring runs in eval mode (BN statistics untouched).
        Calls ``self.setup(model)`` first, so keep counts follow the pruner's target.
        """
        context = context or PruneContext()
        was_training = model.training
        self.setup(model)
        floors = self._floors()
        total = sum(g.channels - self.keep_counts[g.name] for g in self.groups)
        step = self.opts["channels_per_step"] or max(1, math.ceil(total / DEFAULT_ROUNDS))
        previous: dict[str, Tensor] | None = None
        removed, self.rounds = 0, 0
        while removed < total:
            scores = self.group_scores(model, context)
            if previous is not None and self.momentum > 0:
                scores = {k: self.momentum * previous[k] + (1 - self.momentum) * v for k, v in scores.items()}
            counts = {g.name: g.channels for g in self.groups}
            drop = lowest_channels(scores, counts, floors, min(step, total - removed))
            if not drop:
                break  # every group is at its floor
            plan = {name: sorted(set(range(counts[name])) - set(idx)) for name, idx in drop.items()}
            apply_plan(model, self.groups, plan)
            removed += sum(len(idx) for idx in drop.values())
            self.rounds += 1
            previous = {k: v[plan[k]] if k in plan else v for k, v in scores.items()}
            self._refresh_groups(model)
            if removed < total and context.finetune is not None and self.opts["finetune_steps"] > 0:
                model = context.finetune(model, self.opts["finetune_steps"])
        return model.train(was_training)

    def _floors(self) -> dict[str, int]:
        """The fewest channels each group may be cut to."""
        if self.variant == "2017":
            return dict(self.keep_counts)
        # Global ranking: a group may go down to min_channels, unless its rate leaves it whole.
        lowest = max(self.min_channels, 1)
        return {g.name: g.channels if self.keep_counts[g.name] >= g.channels else min(lowest, g.channels)
                for g in self.groups}

    def _refresh_groups(self, model: nn.Module) -> None:
        """Surgery replaced the layers: find the groups again (same names, new widths)."""
        names = [g.name for g in self.groups]
        self.groups = find_channel_groups(model, scope=self.scope, **self.include)
        if [g.name for g in self.groups] != names:
            raise RuntimeError(f"channel groups changed after surgery: {names} -> {[g.name for g in self.groups]}")

    def summary(self) -> dict[str, Any]:
        return {"variant": self.variant, "rounds": self.rounds}


def lowest_channels(scores: Mapping[str, Tensor], counts: Mapping[str, int], floors: Mapping[str, int],
                    n: int) -> dict[str, list[int]]:
    """The ``n`` lowest-scoring channels across groups, no group going below its floor.

    Args:
        scores: {group: (channels,)} comparable across groups.
        counts: current channels of each group; floors: fewest channels each may keep.
        n: how many channels to take (fewer when the floors leave less room).

    Returns:
        {group: sorted channel indices to remove}, only for groups that lose channels.
        Equal scores go in group order, then by channel index.
    """
    names = list(scores)
    flat = torch.cat([scores[k].detach().double().cpu().reshape(-1) for k in names])
    owner = torch.cat([torch.full((counts[k],), i, dtype=torch.long) for i, k in enumerate(names)])
    index = torch.cat([torch.arange(counts[k]) for k in names])
    room = {k: max(counts[k] - floors[k], 0) for k in names}
    drop: dict[str, list[int]] = {}
    for j in torch.argsort(flat, stable=True).tolist():
        if n <= 0:
            break
        name = names[int(owner[j])]
        if room[name] > 0:
            drop.setdefault(name, []).append(int(index[j]))
            room[name] -= 1
            n -= 1
    return {k: sorted(v) for k, v in drop.items()}


def _gated_modules(model: nn.Module, groups: Sequence[ChannelGroup], probe: Tensor) -> dict[str, str]:
    """{module name: group name} for the modules whose outputs are the groups' activations.

    For each producer, the norm that reads its output directly (the BN after a conv), or
    the producer itself when no norm does. Found by one forward pass on ``probe`` (1 image).
    """
    outputs: list[tuple[Tensor, str]] = []
    reader: dict[str, str] = {}

    def on_producer(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            outputs.append((output, name))
        return hook

    def on_norm(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            for tensor, producer in outputs:
                if inputs[0] is tensor:
                    reader[producer] = name
        return hook

    handles = [model.get_submodule(p).register_forward_hook(on_producer(p)) for g in groups for p in g.producers]
    handles += [model.get_submodule(n).register_forward_pre_hook(on_norm(n)) for g in groups for n in g.norms]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return {reader.get(p, p): g.name for g in groups for p in g.producers}


@contextmanager
def _no_parameter_grads(model: nn.Module) -> Iterator[None]:
    """Only activation gradients are needed: skip weight gradients (time and memory)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _taylor_terms(model: nn.Module, gated: Mapping[str, str], loss_fn, *, spatial_mean: bool) -> dict[str, Tensor]:
    """Per-image Taylor terms of one batch: {group: (images, channels)}.

    Each gated module's output a (B, C, H, W) or (B, C) is multiplied by a gate of ones
    (B, C, 1, 1); the gate's gradient is sum over positions of a * dL/da per image and
    channel. ``spatial_mean`` divides by the M positions (Eq. 8's mean). The terms of a
    group's modules add up (one shared gate per stream channel).
    """
    gates: dict[str, tuple[Tensor, int]] = {}

    def gate(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            ones = torch.ones(output.shape[:2] + (1,) * (output.dim() - 2), dtype=output.dtype,
                              device=output.device, requires_grad=True)
            gates[name] = (ones, output[0, 0].numel())
            return output * ones
        return hook

    handles = [model.get_submodule(name).register_forward_hook(gate(name)) for name in gated]
    try:
        with _no_parameter_grads(model), torch.enable_grad():
            loss = loss_fn()
            names = list(gates)
            grads = torch.autograd.grad(loss, [gates[n][0] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    terms: dict[str, Tensor] = {}
    for name, grad in zip(names, grads):
        ones, positions = gates[name]
        value = torch.zeros_like(ones) if grad is None else grad
        value = value.reshape(value.shape[0], value.shape[1])
        if spatial_mean:
            value = value / positions
        group = gated[name]
        terms[group] = terms[group] + value if group in terms else value
    return terms
