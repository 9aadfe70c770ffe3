"""Torch-Pruning anchors: another library's pruners at the bench's budgets, through the same prune job.

With the ``bench`` extra installed (torch-pruning), :class:`TorchPruningAnchor` cuts a
trained model with Torch-Pruning's pruner and its L1-magnitude or Taylor importance; the
bench hands it to :func:`~reid_prune.jobs.prune.prune_checkpoint` in place of a
registered method, so evaluation, fine-tuning and the saved files are those of every
other pruned cell. ``scripts/bench_prune.py`` drives the same pruner for its speed table.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from torch import nn

from ..checkpoint import module_widths
from ..distributed import all_reduce_mean
from ..evaluation import complexity
from ..pruners import PruneContext

# The pruners of this library meet a MACs budget within 0.02 (pruners/budget.py); the anchors must too.
TOLERANCE = 0.02
BISECTION_STEPS = 12  # the fraction to within 0.99 / 2^12, finer than one channel of the widest group
# Fractions found before, by (architecture's widths, budget, input size, round_to, last stage): the fraction depends on
# these alone, so every seed and importance at one budget cuts with the same one, found once per process.
_FOUND: dict[str, float] = {}


def _through_every_layer(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An output that every layer reaches: Torch-Pruning follows only the layers between input and output.

    The logits pass through the BNNeck and the classifier (which reads the cut feature); without a
    classifier, the BNNeck's output, whatever feature the model retrieves.
    """
    if net.classifier is not None:
        return net(x, with_logits=True)[1]
    retrieval = net.retrieval_feature
    net.set_retrieval_feature("after_neck")
    try:
        return net(x)
    finally:
        net.set_retrieval_feature(retrieval)


class TorchPruningAnchor:
    """Torch-Pruning's uniform pruner at a fraction of the MACs kept.

    Torch-Pruning cuts the same fraction of every channel group it finds (its default),
    every layer but the identity classifier's outputs; with ``last_stage=False`` every layer
    of the last stage is left whole too (``ignored_layers``). It takes
    that fraction, not a MACs budget, so the fraction is bisected on copies with the L1
    importance (at one uniform fraction the widths do not depend on the importance), then
    the model is cut once with the chosen importance. Taylor importance reads gradients: those
    of :meth:`PruneContext.loss <reid_prune.pruners.PruneContext.loss>` (the triplet loss on
    the retrieval feature, as this library's Taylor criterion) summed over the context's
    batches and averaged over torchrun ranks, so every rank cuts the same channels.

    Args:
        importance: ``l1`` or ``taylor``.
        target_macs: fraction of the model's MACs to keep.
        input_size: (H, W) at which MACs are counted.
        round_to: kept channel counts are multiples of this.
        last_stage: also cut the last stage (the re-ID feature), as Torch-Pruning does by default.
    """

    def __init__(self, importance: str, *, target_macs: float, input_size: tuple[int, int], round_to: int = 1,
                 last_stage: bool = True) -> None:
        self.importance, self.target_macs, self.last_stage = importance, target_macs, last_stage
        self.input_size, self.round_to = tuple(input_size), round_to
        self.name = f"torch_pruning_{importance}"
        self.requires = "data" if importance == "taylor" else "weights"
        self.scope = "all"  # the residual streams are cut too
        self.ratio: float | None = None

    def _cut(self, model: nn.Module, importance: Any, ratio: float) -> nn.Module:
        import torch_pruning as tp

        device = next(model.parameters()).device
        example = torch.randn(1, 3, *self.input_size, device=device)
        pruner = tp.pruner.MetaPruner(
            model, example, importance=importance, pruning_ratio=ratio,
            ignored_layers=[m for m in (model.classifier, None if self.last_stage else model.layer4) if m is not None],
            round_to=self.round_to if self.round_to > 1 else None,
            forward_fn=_through_every_layer,
        )
        pruner.step()
        return model

    def _find_ratio(self, model: nn.Module) -> float:
        """The uniform fraction whose cut keeps the MACs nearest ``target_macs`` (bisection on copies)."""
        import torch_pruning as tp

        full = complexity(model, self.input_size)["macs"]

        def kept(ratio: float) -> float:
            trial = self._cut(copy.deepcopy(model), tp.importance.MagnitudeImportance(p=1), ratio)
            return complexity(trial, self.input_size)["macs"] / full

        low, high = 0.0, 0.99
        for _ in range(BISECTION_STEPS):
            mid = (low + high) / 2
            low, high = (mid, high) if kept(mid) > self.target_macs else (low, mid)
        ratio = min((low, high), key=lambda r: abs(kept(r) - self.target_macs))
        if abs(kept(ratio) - self.target_macs) > TOLERANCE:
            raise ValueError(f"{self.name}: no uniform fraction keeps {self.target_macs:.4g} of the MACs within "
                             f"{TOLERANCE} (closest: {kept(ratio):.3g}); set prune.round_to lower")
        return ratio

    def _taylor_gradients(self, model: nn.Module, context: PruneContext) -> None:
        model.zero_grad(set_to_none=True)
        for images, pids in context.batches(self.name):
            context.loss(model, images, pids).backward()
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        # Torch-Pruning reads every layer's gradient; the loss does not reach the identity classifier: 0.
        grads = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in params.items()}
        for name, grad in all_reduce_mean(grads).items():
            params[name].grad = grad

    def check(self, model: nn.Module) -> None:
        """Raise a ValueError now if no uniform fraction meets the budget on ``model`` (the fraction is kept)."""
        memo = json.dumps([module_widths(model), self.target_macs, self.input_size, self.round_to, self.last_stage],
                          sort_keys=True)
        self.ratio = _FOUND[memo] = _FOUND[memo] if memo in _FOUND else self._find_ratio(model)

    def prune(self, model: nn.Module, context: PruneContext) -> nn.Module:
        """Cut ``model`` in place to the budget and return it."""
        import torch_pruning as tp

        self.check(model)
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        if self.importance == "taylor":
            self._taylor_gradients(model, context)
            importance = tp.importance.TaylorImportance()
        else:
            importance = tp.importance.MagnitudeImportance(p=1)
        self._cut(model, importance, self.ratio)
        model.zero_grad(set_to_none=True)
        # Torch-Pruning makes new, trainable Parameters: what was fixed (the BNNeck's shift) stays fixed.
        for name, param in model.named_parameters():
            param.requires_grad_(name not in frozen)
        return model

    def summary(self) -> dict[str, Any]:
        """What the cut did, for ``report.json``."""
        import torch_pruning as tp

        return {"allocation": "uniform (Torch-Pruning)", "pruning_ratio": self.ratio, "last_stage": self.last_stage,
                "torch_pruning": tp.__version__}
