"""Entropy: Luo & Wu, "An Entropy-based Pruning Method for CNN Compression" (arXiv 1706.05791).

A channel whose response hardly changes from image to image carries little
information. For the n images of the context's batches, each channel's activation
(B, C, H, W) is global-average-pooled to one value per image; the n values are put
into ``bins`` equal-width bins spanning the channel's own [min, max], and the channel
scores the entropy of that histogram::

    p_i = (images in bin i) / n,      H_j = - sum_i p_i log p_i      (natural log)

The lowest entropies are pruned; a channel that is constant over the images has H = 0
(all images in one bin). The paper does not state the number of bins m; reimplementations
use 20 or 256. We default to 20: with a few hundred images, 256 bins would put almost every
image in a bin of its own, and every channel would score about log n.

**Where the activation is read.** The paper uses the layer's output after ReLU. We read
the input of the group's consumer conv (conv2 of a BasicBlock, conv2 / conv3 of a
Bottleneck), which in a torchvision ResNet is exactly ReLU(BN(conv)): what the next layer
sees, whatever the activation function.

**Schedule.** Layer by layer in network order, as the paper: score one group on the
current (already partly pruned) network, cut it to its keep count, then fine-tune
``finetune_steps`` steps with ``context.finetune`` before the next group. Scoring a
group stops the forward pass once that group's activation has been read.

**Scope.** Only ``internal``: the paper prunes the first two convs of each ResNet-50
bottleneck and leaves the residual streams whole. A stream channel is a sum of several
producers plus the identity, read at every block; it has no single activation whose
entropy the paper defines, so scope ``all`` is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import PruneContext, Pruner, keep_top, register
from .groups import ChannelGroup, find_channel_groups
from .surgery import apply_plan


@register
class EntropyPruner(Pruner):
    """Entropy of each channel's pooled activation over images, layer by layer (Luo & Wu 2017).

    Options:
        bins: number of equal-width histogram bins over each channel's [min, max] (m in the paper).
        finetune_steps: training steps with ``context.finetune`` after each pruned group but the last.
    """

    name = "entropy"
    requires = "data"
    scopes = ("internal",)
    options = {"bins": 20, "finetune_steps": 30}
    description = "entropy of pooled activations over images, layer by layer (Luo & Wu 2017)"

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("scope", "internal") == "all":
            raise ValueError(
                "pruning method 'entropy' supports scope 'internal' only: as in the paper it prunes the convs "
                "inside each block; a residual-stream channel (a sum of several convs and the identity) has no "
                "single activation to take the entropy of. Use scope='internal', or molchanov/haoli/fpgm for 'all'"
            )
        super().__init__(**kwargs)
        bins, steps = self.opts["bins"], self.opts["finetune_steps"]
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
            raise ValueError(f"entropy option bins: expected an integer >= 2, got {bins!r}")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"entropy option finetune_steps: expected an integer >= 0, got {steps!r}")
        self.layers_pruned = 0

    def group_scores(self, model: nn.Module, context: PruneContext) -> dict[str, Tensor]:
        """Entropy (float64, CPU) of every channel of every group, all read in one pass per batch."""
        pooled = pooled_activations(model, self.groups, context.batches(self.name))
        return {name: channel_entropy(values, self.opts["bins"]) for name, values in pooled.items()}

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        """Layer-by-layer schedule; returns ``model`` (or what ``context.finetune`` returned), physically pruned.

        The same batches score every group (read once from the context). Calls
        ``self.setup(model)`` first, so keep counts follow the pruner's target.
        """
        context = context or PruneContext()
        was_training = model.training
        self.setup(model)
        batches = context.batches(self.name)
        names = [g.name for g in self.groups if self.keep_counts[g.name] < g.channels]
        self.layers_pruned = 0
        for position, name in enumerate(names):
            group = next(g for g in self.groups if g.name == name)
            pooled = pooled_activations(model, [group], batches)[name]
            keep = keep_top(channel_entropy(pooled, self.opts["bins"]), self.keep_counts[name])
            apply_plan(model, self.groups, {name: keep})
            self.layers_pruned += 1
            self.groups = find_channel_groups(model, scope=self.scope, **self.include)
            last = position == len(names) - 1
            if not last and context.finetune is not None and self.opts["finetune_steps"] > 0:
                model = context.finetune(model, self.opts["finetune_steps"])
        return model.train(was_training)

    def summary(self) -> dict[str, Any]:
        return {"layers_pruned": self.layers_pruned, "bins": self.opts["bins"]}


class _Enough(Exception):
    """Raised by a hook once every requested activation of a batch is read: the rest of the forward is skipped."""


def pooled_activations(model: nn.Module, groups: Sequence[ChannelGroup],
                       batches: Sequence[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Global-average-pooled activation of each group per image: {group: (images, channels)}.

    The activation is the input of the group's first consumer (for an internal ResNet
    group, ReLU(BN(conv))), read in eval mode without gradients.
    """
    pooled: dict[str, list[Tensor]] = {g.name: [] for g in groups}
    pending: set[str] = set()

    def read(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0]  # (B, C, H, W), or (B, C) for a Linear consumer
            per_image = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
            pooled[name].append(per_image.double().cpu())
            pending.discard(name)
            if not pending:
                raise _Enough
        return hook

    handles = [model.get_submodule(g.consumers[0]).register_forward_pre_hook(read(g.name)) for g in groups]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, _ in batches:
                pending.update(pooled)
                try:
                    model(images)
                except _Enough:
                    pass
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in pooled.items()}


def channel_entropy(values: Tensor, bins: int) -> Tensor:
    """Entropy of each column's histogram: (n, C) -> (C,), float64.

    Column j is binned into ``bins`` equal-width bins from its min to its max (the last bin
    includes the max, as numpy.histogram); a constant column has entropy 0.
    """
    values = values.double()
    n, channels = values.shape
    low, high = values.min(dim=0).values, values.max(dim=0).values
    fractions = torch.arange(bins + 1, dtype=torch.float64) / bins
    edges = low[:, None] + (high - low)[:, None] * fractions  # (C, bins + 1)
    index = torch.searchsorted(edges, values.t().contiguous(), right=True) - 1
    index = index.clamp(0, bins - 1)  # the max itself falls in the last bin
    counts = torch.zeros(channels, bins, dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=torch.float64))
    return torch.special.entr(counts / n).sum(dim=1) + 0.0  # entr(p) = -p log p; + 0.0 turns -0.0 into 0.0
