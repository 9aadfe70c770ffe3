"""Reconstruction-based pruning (ThiNet, Channel Pruning): sampling, contribution Gram, least-squares refit.

Both methods judge a group's channels by the output of the one conv that reads them (the
group's *consumer*, weight W (out_c, in_c, kh, kw)). At a sampled output location of an
image the consumer reads a patch X (in_c, kh, kw) of the group's channels (after BN and
ReLU), and output filter f computes::

    y_f = bias_f + sum_c x_fc,    x_fc = sum over the kernel of W[f, c] * X[c]

A *row* is one (image, location, filter) triple with its vector (x_f1 .. x_f,in_c) of
per-channel contributions. Pruning channels removes their terms from every row; a method picks the
channels whose removal changes the rows' sums least, then the consumer's kept weights are
refit by least squares so that the pruned layer reproduces the original outputs.

Sampling follows ThiNet's reference code (Roll920/ThiNet_Code, ``compress_model.py``): a
few random output locations per image (``samples_per_image``, 10 there and in both papers),
taken by a forward pre-hook on the consumer that unfolds only the sampled patches, so no
layer's activations are held beyond one batch. Where the reference draws one random output
filter per location, every filter is used here: the selection criteria only need the Gram
matrix of the rows, sum over rows of x x^T, and that sum over all filters costs no more than
over one (:func:`contribution_gram`), so the sampled filter is replaced by its expectation.

Schedule (:class:`ReconstructionPruner`): block by block in network order, each group is
sampled on the current model (earlier blocks already pruned and refit), selected, cut by
surgery and refit; ``finetune_steps`` training steps may follow each block, as ThiNet
fine-tunes after each ResNet block.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import broadcast_tensors
from .base import PruneContext, Pruner, keep_top
from .groups import ChannelGroup
from .surgery import apply_plan

REFITS = ("weights", "scale", "none")


class _StopForward(Exception):
    """Raised by the sampling hook once every requested consumer has been read: the rest of the net is not run."""


def output_grid(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """Output (H, W) of ``conv`` for an input of (height, width)."""
    size = []
    for extent, k, s, p, d in zip((height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        size.append((extent + 2 * p - d * (k - 1) - 1) // s + 1)
    return size[0], size[1]


def gather_patches(x: Tensor, conv: nn.Conv2d, image: Tensor, row: Tensor, col: Tensor) -> Tensor:
    """The input patches ``conv`` reads to compute output locations (image, row, col).

    Args:
        x: the conv's input (B, C, H, W).
        conv: a Conv2d with zero padding.
        image, row, col: (n,) indices of the sampled output locations.

    Returns:
        (n, C, kh * kw), ordered like ``conv.weight.flatten(2)``, so that
        ``patches.flatten(1) @ conv.weight.flatten(1).T + bias`` is the conv's output there (n, out_c).
    """
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    rows = row[:, None] * sh + torch.arange(kh, device=x.device) * dh  # (n, kh)
    cols = col[:, None] * sw + torch.arange(kw, device=x.device) * dw  # (n, kw)
    # Advanced indices around a slice put their dims first: (n, kh, kw, C).
    patches = padded[image[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return patches.permute(0, 3, 1, 2).reshape(len(image), x.shape[1], kh * kw)


def _check_consumer(name: str, conv: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{name} is a {type(conv).__name__}; reconstruction needs the group's consumer to be a Conv2d")
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise NotImplementedError(
            f"{name}: reconstruction samples plain convolutions with integer zero padding "
            f"(got groups={conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r})"
        )


@torch.no_grad()
def sample_patches(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    consumers: Sequence[str],
    samples_per_image: int,
    generator: torch.Generator,
) -> list[Tensor]:
    """Input patches of each consumer conv at randomly sampled output locations, in one pass over ``batches``.

    In every image, ``samples_per_image`` distinct locations of the first consumer's output
    grid are drawn (all of them when the grid is smaller); the other consumers are read at
    the same locations, so they must have the same output grid. Each forward stops as soon
    as every consumer has been read. The model should be in eval mode.

    Returns:
        one (n, in_c, kh * kw) float32 CPU tensor per consumer, n = images x samples per image.
    """
    convs = [model.get_submodule(name) for name in consumers]
    for name, conv in zip(consumers, convs):
        _check_consumer(name, conv)
    collected: list[list[Tensor]] = [[] for _ in consumers]
    state: dict[str, Any] = {}

    def make_hook(index: int):
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            grid = output_grid(module, x.shape[2], x.shape[3])
            if index == 0:
                count = min(samples_per_image, grid[0] * grid[1])
                flat = torch.rand(x.shape[0], grid[0] * grid[1], generator=generator).argsort(dim=1)[:, :count]
                image = torch.arange(x.shape[0]).repeat_interleave(count)
                flat = flat.reshape(-1)
                state["locations"] = tuple(t.to(x.device) for t in (image, flat // grid[1], flat % grid[1]))
                state["grid"] = grid
            elif "locations" not in state or state["grid"] != grid:
                raise ValueError(
                    f"{consumers[index]} must run after {consumers[0]} with the same output grid to share its "
                    f"sampled locations (grids {state.get('grid')} and {grid})"
                )
            collected[index].append(gather_patches(x, module, *state["locations"]).float().cpu())
            state["seen"] += 1
            if state["seen"] == len(consumers):
                raise _StopForward

        return hook

    handles = [conv.register_forward_pre_hook(make_hook(i)) for i, conv in enumerate(convs)]
    try:
        for images, _ in batches:
            state.clear()
            state["seen"] = 0
            try:
                # Channels-last activations make the convolutions markedly faster on CPU (oneDNN).
                model(images.contiguous(memory_format=torch.channels_last))
            except _StopForward:
                continue
            raise RuntimeError(f"the forward pass never reached {', '.join(consumers)}")
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(parts) for parts in collected]


def conv_outputs(patches: Tensor, weight: Tensor) -> Tensor:
    """The conv's outputs minus bias at the patches: (n, in_c, k) x (out_c, in_c, kh, kw) -> (n, out_c), float64."""
    return patches.flatten(1).double() @ weight.detach().flatten(1).double().cpu().T


def contribution_gram(patches: Tensor, weight: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Gram matrix of the per-channel contributions over every row (patch p, output filter f).

    With x_pfc = sum_a W[f, c, a] X[p, c, a] (a over kernel positions)::

        G[c, d] = sum_{p, f} x_pfc x_pfd = sum_{a, b} (sum_f W[f, c, a] W[f, d, b]) (sum_p X[p, c, a] X[p, d, b])

    The right-hand side is (W^T W) * (X^T X) on the flattened (in_c k) axes, summed over
    each k x k block: it never forms the (n out_c, in_c) rows and costs (out_c + n) (in_c k)^2
    multiply-adds instead of n out_c in_c^2.

    Args:
        patches: (n, in_c, k) consumer input patches, k = kh * kw.
        weight: (out_c, in_c, kh, kw) consumer weights.
        dtype: precision of the products; float32 is ample to rank channels.

    Returns:
        (in_c, in_c) float64. The rows' sums y_pf (outputs minus bias) have sum_{p,f} y^2 = G.sum(),
        and ``G.sum(dim=1)[c]`` = sum_{p,f} x_pfc y_pf.
    """
    n, channels, k = patches.shape
    x = patches.reshape(n, channels * k).to(dtype)
    w = weight.detach().reshape(weight.shape[0], channels * k).to(device="cpu", dtype=dtype)
    products = (w.T @ w).mul_(x.T @ x)
    return products.reshape(channels, k, channels, k).sum(dim=(1, 3)).double()


def _ridge(inputs: Tensor, residual: Tensor, alphas: Iterable[float], at: Tensor | None = None) -> Iterable[Tensor]:
    """For each alpha, D = argmin ||residual - inputs D||^2 + alpha ||D||^2 (m, out), or ``at @ D`` when given.

    Solved by Cholesky on the m x m normal equations, or on the n x n kernel form
    D = inputs^T (inputs inputs^T + alpha I)^-1 residual when there are fewer rows n than
    unknowns m; ``at`` (h, m) is then folded in once, before the loop.
    """
    n, m = inputs.shape
    if n < m:
        matrix, rhs = inputs @ inputs.T, residual
        left = inputs.T if at is None else at @ inputs.T
    else:
        matrix, rhs, left = inputs.T @ inputs, inputs.T @ residual, at
    eye = torch.eye(len(matrix), dtype=matrix.dtype)
    for alpha in alphas:
        solved = torch.cholesky_solve(rhs, torch.linalg.cholesky(matrix + alpha * eye))
        yield solved if left is None else left @ solved


def ridge_correction(inputs: Tensor, residual: Tensor, holdout: float = 0.2) -> Tensor:
    """D minimising ||residual - inputs D||^2 + alpha ||D||^2, alpha chosen on held-out rows.

    The last ``holdout`` fraction of the rows (whole images: rows are image-major) is held
    out; alpha = 10^-6 .. 10^0 times the mean squared column norm of the fit rows, or no
    correction at all (alpha = infinity), whichever reproduces the held-out residual best;
    the chosen alpha, scaled to the row count, is then refit on every row. alpha > 0 keeps
    the problem well posed with fewer rows than unknowns.

    Args:
        inputs: (n, m) float64.
        residual: (n, out) float64.
        holdout: fraction of rows held out to choose alpha.

    Returns:
        (m, out) float64; zeros when no alpha beats leaving the weights alone.
    """
    n, m = inputs.shape
    split = n - max(1, int(n * holdout))
    if split < 1:
        return torch.zeros(m, residual.shape[1], dtype=torch.float64)
    fit_x, fit_r, held_x, held_r = inputs[:split], residual[:split], inputs[split:], residual[split:]
    unit = max(float(fit_x.pow(2).sum()) / m, 1e-300)
    alphas = [unit * 10.0**power for power in range(-6, 1)]
    best_error, best_alpha = float(held_r.pow(2).sum()), None
    for alpha, predicted in zip(alphas, _ridge(fit_x, fit_r, alphas, at=held_x)):
        error = float((held_r - predicted).pow(2).sum())
        if error < best_error:
            best_error, best_alpha = error, alpha
    if best_alpha is None:
        return torch.zeros(m, residual.shape[1], dtype=torch.float64)
    return next(iter(_ridge(inputs, residual, [best_alpha * n / split])))


def refit_weights(patches: Tensor, weight: Tensor, keep: Sequence[int] | Tensor, how: str = "weights") -> Tensor:
    """Consumer weights for the kept input channels that best reproduce its original outputs on the samples.

    Targets are the original outputs minus bias, Y = X W^T (n, out_c), with X the patches.

    * ``"weights"`` (Channel Pruning's reconstruction; the issue's "refit the next layer's kept
      weights by least squares"): W'_S = W_S + D with D the ridge-regularised least-squares fit
      of the removed channels' share, Y - X_S W_S^T = X_{removed} W_{removed}^T, by the kept
      channels' patches X_S (n, |S| k), for all filters at once (:func:`ridge_correction`).
      Plain least squares (the paper) needs many more sampled rows than the |S| k unknowns
      per filter; with a few hundred images it fits the samples and loses on fresh images,
      so the penalty is chosen on held-out samples and shrinks towards the sliced weights.
    * ``"scale"`` (ThiNet's paper, Section 3.3, and reference code): one factor per kept
      channel, w = argmin sum over rows (y - sum_{c in S} w_c x_c)^2, then W'[:, c] = w_c W[:, c].
    * ``"none"``: the sliced weights W[:, S].

    Args:
        patches: (n, in_c, k) consumer input patches.
        weight: (out_c, in_c, kh, kw) the consumer's original weights.
        keep: indices of the kept input channels.
        how: ``"weights"``, ``"scale"`` or ``"none"``.

    Returns:
        (out_c, len(keep), kh, kw) float64 on the CPU.
    """
    keep = torch.as_tensor(keep, dtype=torch.long)
    original = weight.detach().double().cpu()
    sliced = original[:, keep]
    if how == "none":
        return sliced
    if how == "scale":
        gram = contribution_gram(patches, weight, torch.float64)
        # Normal equations of the rows: G_SS w = sum_{p,f} x_S y = G[S, :] 1.
        factors = torch.linalg.lstsq(gram[keep][:, keep], gram[keep].sum(dim=1, keepdim=True)).solution
        return sliced * factors.reshape(1, -1, 1, 1)
    if how != "weights":
        raise ValueError(f"refit: expected one of {list(REFITS)}, got {how!r}")
    kept_patches = patches[:, keep].flatten(1).double()  # (n, |S| k)
    residual = conv_outputs(patches, weight) - kept_patches @ sliced.flatten(1).T  # the removed channels' share
    return sliced + ridge_correction(kept_patches, residual).T.reshape(sliced.shape)


def reconstruction_error(patches: Tensor, weight: Tensor, keep: Sequence[int] | Tensor, new_weight: Tensor) -> float:
    """Relative error ||Y - X_S W'^T|| / ||Y|| of the pruned consumer on the samples, Y = X W^T the original outputs."""
    keep = torch.as_tensor(keep, dtype=torch.long)
    target = conv_outputs(patches, weight)
    approx = conv_outputs(patches[:, keep], new_weight)
    return float((target - approx).norm() / target.norm().clamp_min(1e-30))


def derives_samples(model: nn.Module, group: ChannelGroup, follower: ChannelGroup) -> bool:
    """Whether ``follower``'s consumer samples can be computed from ``group``'s consumer patches.

    True when the follower's producer is ``group``'s consumer and the follower's consumer reads
    it through one norm with a 1x1, stride-1, unpadded conv (a bottleneck's conv2 -> bn2 ->
    relu -> conv3). Its input at a sampled location is then relu(norm(producer(patch))):
    :func:`follower_patches`. The schedule checks this against the network on the first
    pass, then samples a bottleneck's second group without running the network again,
    exactly as a fresh pass over the cut and refit network would at the same locations.
    """
    if follower.producers != group.consumers or len(follower.norms) != 1 or len(follower.consumers) != 1:
        return False
    conv = model.get_submodule(follower.consumers[0])
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0))


@torch.no_grad()
def follower_patches(model: nn.Module, patches: Tensor, follower: ChannelGroup) -> Tensor:
    """relu(norm(producer(patches))) for a follower of :func:`derives_samples`: (n, c, k) -> (n, producer out_c, 1)."""
    producer = model.get_submodule(follower.producers[0])
    norm = model.get_submodule(follower.norms[0])
    weight = producer.weight
    # A patch is the producer's whole receptive field of one output: an unpadded conv gives that output.
    x = patches.reshape(len(patches), patches.shape[1], *producer.kernel_size).to(weight.device, weight.dtype)
    out = norm(F.conv2d(x, weight, producer.bias))  # (n, out_c, 1, 1)
    return out.clamp_min(0).float().cpu().reshape(len(patches), -1, 1)


def _block_of(group: ChannelGroup) -> str:
    return group.producers[0].rpartition(".")[0]


class ReconstructionPruner(Pruner):
    """Shared schedule of ThiNet and Channel Pruning; subclasses give :meth:`channel_scores`.

    Options (declared by subclasses, on top of their own):
        samples_per_image: sampled output locations per image (10).
        refit: ``"weights"``, ``"scale"`` or ``"none"`` (:func:`refit_weights`).
        finetune_steps: training steps after each block but the last (0: none); needs
            ``PruneContext.finetune``.
        seed: seed of the location sampling.
    """

    requires: ClassVar[str] = "data"
    scopes: ClassVar[tuple[str, ...]] = ("internal",)
    options: ClassVar[dict[str, Any]] = {"samples_per_image": 10, "refit": "weights", "finetune_steps": 0, "seed": 0}

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("scope") == "all":
            raise ValueError(
                f"pruning method {self.name!r} supports scope 'internal' only: it judges channels by how well the one "
                "conv that reads them can be reconstructed without them, and a residual stream's channels are read "
                "by several convs (each block's first conv and shortcut) and by the residual add"
            )
        super().__init__(**kwargs)
        opts = self.opts
        if not (isinstance(opts["samples_per_image"], int) and opts["samples_per_image"] >= 1):
            raise ValueError(f"{self.name} option samples_per_image: expected an integer >= 1, got "
                             f"{opts['samples_per_image']!r}")
        if opts["refit"] not in REFITS:
            raise ValueError(f"{self.name} option refit: expected one of {list(REFITS)}, got {opts['refit']!r}")
        if not (isinstance(opts["finetune_steps"], int) and opts["finetune_steps"] >= 0):
            raise ValueError(f"{self.name} option finetune_steps: expected an integer >= 0, got "
                             f"{opts['finetune_steps']!r}")
        self.errors: dict[str, dict[str, float]] = {}

    def channel_scores(self, gram: Tensor, keep_count: int) -> Tensor:
        """Importance of each channel from the contribution Gram (in_c, in_c); the top ``keep_count`` are kept."""
        raise NotImplementedError

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        for g in self.groups:
            if len(g.consumers) != 1:
                raise ValueError(
                    f"group {g.name!r} is read by {g.consumers}; {self.name} needs exactly one consumer conv")
            _check_consumer(g.consumers[0], model.get_submodule(g.consumers[0]))

    def group_scores(self, model: nn.Module, context: PruneContext) -> dict[str, Tensor]:
        """One-shot scores of every group on the current model (one sampling pass per group)."""
        batches = context.batches(self.name)
        generator = torch.Generator().manual_seed(self.opts["seed"])
        was_training = model.training
        model.eval()
        scores = {}
        for g in self.groups:
            (patches,) = sample_patches(model, batches, g.consumers, self.opts["samples_per_image"], generator)
            weight = model.get_submodule(g.consumers[0]).weight
            scores[g.name] = self.channel_scores(contribution_gram(patches, weight), self.keep_counts[g.name])
        model.train(was_training)
        return scores

    def prune(self, model: nn.Module, context: PruneContext | None = None) -> nn.Module:
        """Block by block: sample each group on the current model, select, cut, refit; fine-tune between blocks."""
        context = context or PruneContext()
        steps = self.opts["finetune_steps"]
        if steps and context.finetune is None:
            raise ValueError(
                f"{self.name} option finetune_steps={steps} needs PruneContext(finetune=...) to train with")
        batches = context.batches(self.name)
        self.setup(model)
        generator = torch.Generator().manual_seed(self.opts["seed"])
        was_training = model.training
        self.errors = {}
        cut = [g for g in self.groups if self.keep_counts[g.name] < g.channels]
        blocks = [list(groups) for _, groups in itertools.groupby(cut, key=_block_of)]
        for number, block in enumerate(blocks):
            carried = None  # the next group's samples, derived from this group's (see derives_samples)
            for position, group in enumerate(block):
                model.eval()
                follower = block[position + 1] if position + 1 < len(block) else None
                if follower is not None and not derives_samples(model, group, follower):
                    follower = None
                if carried is None:
                    consumers = group.consumers + (follower.consumers if follower else [])
                    sampled = sample_patches(model, batches, consumers, self.opts["samples_per_image"], generator)
                    patches = sampled[0]
                    if follower is not None and not torch.allclose(
                        follower_patches(model, patches, follower), sampled[1],
                        rtol=1e-4, atol=1e-5 * float(sampled[1].abs().max().clamp_min(1e-12))
                    ):
                        follower = None  # not norm + ReLU in between: the follower gets its own pass
                else:  # derived samples were not read from the network, so their own follower is not checked
                    patches, follower = carried, None
                kept_patches = self._prune_group(model, group, patches)
                carried = follower_patches(model, kept_patches, follower) if follower is not None else None
            if steps and number < len(blocks) - 1:
                model = context.finetune(model, steps)
        return model.train(was_training)

    def _prune_group(self, model: nn.Module, group: ChannelGroup, patches: Tensor) -> Tensor:
        """Select, cut and refit one group; returns the patches restricted to the kept channels."""
        consumer = group.consumers[0]
        weight = model.get_submodule(consumer).weight.detach().clone()
        scores = self.channel_scores(contribution_gram(patches, weight), self.keep_counts[group.name])
        keep = keep_top(scores, self.keep_counts[group.name])
        new_weight = refit_weights(patches, weight, keep, self.opts["refit"])
        apply_plan(model, [group], {group.name: keep})
        with torch.no_grad():
            target = model.get_submodule(consumer).weight
            target.copy_(new_weight.to(dtype=target.dtype, device=target.device))
            # Under torchrun each rank refits on its own samples; rank 0's fit is kept, so every
            # rank samples the next group from the same network.
            broadcast_tensors([target])
        self.errors[group.name] = {
            "sliced": reconstruction_error(patches, weight, keep, weight[:, keep]),
            "refit": reconstruction_error(patches, weight, keep, new_weight),
        }
        return patches[:, keep]

    def summary(self) -> dict[str, Any]:
        """Relative reconstruction error of each consumer on the samples, with sliced and with refit weights."""
        errors = {name: {k: round(v, 6) for k, v in e.items()} for name, e in self.errors.items()}
        return {"reconstruction_error": errors}
