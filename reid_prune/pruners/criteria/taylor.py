"""First-order Taylor importance of feature maps (Molchanov et al., ICLR 2017 and CVPR 2019).

Removing feature map k changes the loss by about ``a * dL/da`` summed over the map, so
for image n (2017, Eq. 8 in Sec. 2.2)::

    t[n, k] = (1 / M) * sum over the M positions of a[n, k] * dL/da[n, k]
    theta_k = mean over images n of |t[n, k]|       (abs_of="example": the paper)
            = |mean over images n of t[n, k]|       (abs_of="batch": jacobgil/pytorch-pruning)

ranked across layers after the layer-wise L2 normalisation theta_k / ||theta||_2 (Sec. 2.3;
``normalizer = "l2"``, applied by the allocation and the iterative schedule).

2019 (NVlabs/Taylor_pruning ``pruning_engine.py`` method 22, "gate after BN"): a gate of
ones multiplies each BN output, and a channel scores the squared gate gradient::

    g_k = sum over images and positions of a * dL/da     (one mini-batch)
    score_k = mean over mini-batches of g_k^2

with no normalisation (``normalizer = "none"``).

**Where a is read.** ``a`` is the output of the BatchNorm that follows each producer
(the raw producer output where none follows), before the ReLU. The paper gates after
the nonlinearity; with ReLU the two give the same number, element by element, because
the gradient at the BN output is the gradient at the ReLU output masked to a > 0. A dead
channel (zero filter and BN affine) has a = 0 and scores exactly 0.

**Residual streams.** Removing a stream channel zeroes every producer's BN output on
it, so its Taylor term is the sum of theirs: one gate shared by every BN of the group.
The 2019 variant divides the squared term by the number of producers sharing the gate,
as the reference divides a stage's shared skip gate by its number of blocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from ..groups import ChannelGroup
from .base import Criterion, PruneContext

VARIANTS = (2017, 2019)
ABS_OF = ("example", "batch")


class Taylor(Criterion):
    """First-order Taylor criterion on activations.

    Args:
        variant: ``2017`` (per-example |t|, L2-normalised per group) or ``2019`` (squared
            gate gradient per mini-batch, no normalisation).
        abs_of: 2017 only; ``"example"`` (the paper) or ``"batch"``.
    """

    name = "taylor"
    needs_data = True
    # The scores are gradients of the loss, by default the batch-hard triplet loss on the features the model
    # returns, and which feature it returns (before or after the neck) is model.retrieval_feature.
    reads = ("model.retrieval_feature",)

    def __init__(self, variant: int = 2017, abs_of: str = "example") -> None:
        self.variant, self.abs_of = variant, abs_of
        self.normalizer = "l2" if variant == 2017 else "none"

    def scores(self, model: nn.Module, groups: Sequence[ChannelGroup], context: PruneContext) -> dict[str, Tensor]:
        """Taylor importance (float64, CPU) of every channel of every group, on ``context``'s batches.

        Runs in eval mode (BN statistics untouched) and computes no weight gradients.
        """
        batches = context.batches(f"criterion {self.name!r}")
        sums = {g.name: torch.zeros(g.channels, dtype=torch.float64) for g in groups}
        count = 0
        was_training = model.training
        model.eval()
        try:
            gated = _gated_modules(model, groups, batches[0][0][:1])
            for images, pids in batches:
                per_image = _taylor_terms(model, gated, lambda: context.loss(model, images, pids),
                                          spatial_mean=self.variant == 2017)
                for name, terms in per_image.items():  # terms: (images, channels)
                    if self.variant == 2019:
                        sums[name] += terms.sum(dim=0).double().cpu() ** 2
                    elif self.abs_of == "example":
                        sums[name] += terms.abs().sum(dim=0).double().cpu()
                    else:
                        sums[name] += terms.sum(dim=0).double().cpu()
                count += 1 if self.variant == 2019 else images.shape[0]
        finally:
            model.train(was_training)
        producers = {g.name: len(g.producers) for g in groups}
        if self.variant == 2019:  # producers share the stream's gate
            return {name: total / count / producers[name] for name, total in sums.items()}
        return {name: (total / count).abs() for name, total in sums.items()}


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
