"""Sampling for reconstruction criteria (ThiNet, Channel Pruning): consumer patches and their contribution Gram.

Both methods judge a group's channels by the output of the one conv that reads them (the
group's *consumer*, weight W (out_c, in_c, kh, kw)). At a sampled output location of an
image the consumer reads a patch X (in_c, kh, kw) of the group's channels (after BN and
ReLU), and output filter f computes::

    y_f = bias_f + sum_c x_fc,    x_fc = sum over the kernel of W[f, c] * X[c]

A *row* is one (image, location, filter) triple with its vector (x_f1 .. x_f,in_c) of
per-channel contributions.

Sampling follows ThiNet's reference code (Roll920/ThiNet_Code, ``compress_model.py``): a
few random output locations per image (``samples_per_image``, 10 there and in both papers),
taken by a forward pre-hook on the consumer that unfolds only the sampled patches, so no
layer's activations are held beyond one batch. Where the reference draws one random output
filter per location, every filter is used here: the selection criteria only need the Gram
matrix of the rows, sum over rows of x x^T, and that sum over all filters costs no more than
over one (:func:`contribution_gram`), so the sampled filter is replaced by its expectation.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..groups import ChannelGroup


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


def check_consumer(name: str, conv: nn.Module) -> None:
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
        check_consumer(name, conv)
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


def contribution_sums(patches: Tensor, weight: Tensor) -> Tensor:
    """Sum over every row (patch p, output filter f) of each channel's contribution x_pfc: (in_c,) float64.

    sum_{p,f} x_pfc = sum_a (sum_f W[f, c, a]) (sum_p X[p, c, a]); with :func:`contribution_gram`
    it gives the Gram matrix of the centred rows, for a regression with an intercept.
    """
    w = weight.detach().double().cpu().flatten(2).sum(dim=0)  # (in_c, k)
    return (patches.double().sum(dim=0) * w).sum(dim=1)


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
