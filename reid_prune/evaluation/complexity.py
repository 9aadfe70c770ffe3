"""Model cost: parameters, multiply-accumulates and measured latency."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..precision import autocast_context, resolve_precision
from .features import eval_mode


def complexity(model: nn.Module, input_size: tuple[int, int] = (256, 128)) -> dict:
    """Count parameters and multiply-accumulates of one forward pass at batch 1.

    MACs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which
    counts only convolutions and matrix products (``Linear`` is ``addmm``),
    as 2 FLOPs per multiply-accumulate; bias additions, BatchNorm, activations,
    pooling and residual additions are **not** counted, as in the usual
    ResNet figures (ResNet-50 at 224x224: 4.09 GMACs). The pass runs in eval
    mode without gradients on the model's own device, so BatchNorm statistics
    are untouched and every submodule's training flag is restored.

    Args:
        model: maps (1, 3, H, W) to anything.
        input_size: (H, W) of the input image.

    Returns:
        ``{"params": int (all parameters, trainable or not), "macs": int, "flops": int (2 x macs)}``.
    """
    params = sum(p.numel() for p in model.parameters())
    x = _dummy_input(model, 1, input_size)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(x)
    macs = counter.get_total_flops() // 2
    return {"params": int(params), "macs": int(macs), "flops": int(2 * macs)}


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, int] = (256, 128),
    *,
    batch_sizes: tuple[int, ...] = (1, 32),
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    channels_last: bool = False,
    precision: str | Sequence[str] = "fp32",
) -> dict[str, float] | dict[str, dict[str, float]]:
    """Measure inference time per image on random inputs, at one precision or several side by side.

    A copy of the model is moved to ``device`` (and to channels-last memory
    format when asked), so the caller's model is left as it was. Each batch
    size gets ``warmup`` untimed passes, then ``repeats`` timed ones under
    :func:`torch.inference_mode`; CUDA is synchronised around each timed pass.
    With several precisions, each timed pass of one precision is followed by one
    of the next, so that a change of machine load hits them alike and their
    ratio is fair.

    Args:
        model: maps (B, 3, H, W) images to features.
        input_size: (H, W) of the input image.
        batch_sizes: the batch sizes to time.
        device: where to run.
        warmup: untimed passes before timing.
        repeats: timed passes; the median is reported.
        channels_last: run with NHWC memory format (often faster on GPUs and recent CPUs).
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (or a train.amp setting, e.g.
            ``auto``), or a sequence of them to time side by side.

    Returns:
        ``{f"batch{b}": median milliseconds per image}`` for each ``b`` in ``batch_sizes``; for a
        sequence of precisions, ``{precision: {f"batch{b}": ms}}`` keyed by the resolved precision.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure_latency: need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    several = not isinstance(precision, str)
    precisions = list(dict.fromkeys(resolve_precision(p, device) for p in (precision if several else [precision])))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    runner = copy.deepcopy(model).to(device, memory_format=memory_format).eval()
    times: dict[str, dict[int, list[float]]] = {p: {b: [] for b in batch_sizes} for p in precisions}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            x = _dummy_input(runner, batch_size, input_size).contiguous(memory_format=memory_format)
            for name in precisions:
                with autocast_context(device, name):
                    for _ in range(warmup):
                        runner(x)
            for _ in range(repeats):
                for name in precisions:
                    with autocast_context(device, name):
                        _synchronize(device)
                        start = time.perf_counter()
                        runner(x)
                        _synchronize(device)
                    times[name][batch_size].append(time.perf_counter() - start)
    latency = {name: {f"batch{b}": statistics.median(values) * 1000 / b for b, values in per_batch.items()}
               for name, per_batch in times.items()}
    return latency if several else latency[precisions[0]]


def _dummy_input(model: nn.Module, batch_size: int, input_size: tuple[int, int]) -> torch.Tensor:
    """Random (batch_size, 3, H, W) images on the model's device, in its parameter dtype."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    height, width = input_size
    return torch.randn(batch_size, 3, height, width, device=device, dtype=dtype)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
