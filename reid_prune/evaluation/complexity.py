"""Model cost: parameters, multiply-accumulates and measured latency."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..precision import ComputeSettings, autocast_context, cpu_threads, resolve_precision
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
                        synchronize(device)
                        start = time.perf_counter()
                        runner(x)
                        synchronize(device)
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


def paired_latency(models: Sequence[nn.Module], input_size: tuple[int, int] = (256, 128), *, batch_size: int = 1,
                   device: str | torch.device = "cpu", precision: str = "fp32", channels_last: bool = False,
                   rounds: int = 5, warmup: int = 1, min_seconds: float = 0.0) -> list[float]:
    """Median milliseconds per image of several models, timed in turn on one input, round after round.

    Each round times one pass of every model in order, so a change of machine load during
    the measurement hits all of them alike: their ratios are fair even on a busy machine,
    where each figure alone is not. Copies of the models are placed on ``device`` in the
    memory format (the callers' models are left as they are) and run under
    :func:`torch.inference_mode` and the precision's autocast.

    Args:
        models: each maps (B, 3, H, W) images to anything.
        input_size: (H, W) of the input image.
        batch_size: images per pass.
        device, precision, channels_last: as :func:`measure_latency`.
        rounds: timed passes of each model; the median is reported.
        warmup: untimed passes of each model first.
        min_seconds: keep timing rounds (up to 10 x ``rounds``) until this long has passed, so
            fast models get more rounds and their medians are less noisy.

    Returns:
        [median ms per image of each model], in the order given.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"paired_latency: need rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    runners = [copy.deepcopy(m).to(device, memory_format=memory_format).eval() for m in models]
    times: list[list[float]] = [[] for _ in runners]
    with torch.inference_mode(), autocast_context(device, precision):
        x = _dummy_input(runners[0], batch_size, input_size).contiguous(memory_format=memory_format)
        for runner in runners:
            for _ in range(warmup):
                runner(x)
        started = time.perf_counter()
        done = 0
        while done < rounds or (done < 10 * rounds and time.perf_counter() - started < min_seconds):
            done += 1
            for runner, spent in zip(runners, times):
                synchronize(device)
                start = time.perf_counter()
                runner(x)
                synchronize(device)
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1000 / batch_size for spent in times]


def latency_ratios(original: nn.Module, candidate: nn.Module, input_size: tuple[int, int] = (256, 128), *,
                   batch_sizes: Sequence[int] = (1, 32), compute: ComputeSettings | None = None, threads: int = 0,
                   rounds: int = 7, min_seconds: float = 2.0) -> dict[str, float]:
    """Measured latency of ``candidate`` over ``original``'s at each batch size, timed in turn (:func:`paired_latency`).

    Args:
        original, candidate: the two models (left as they are).
        input_size: (H, W) of the input image.
        batch_sizes: the batch sizes to compare at.
        compute: device, precision and memory format (None: fp32 NCHW on the CPU).
        threads: CPU intra-op threads while timing (0: torch's current count).
        rounds: timed passes of each model per batch size; medians are compared.
        min_seconds: at least this long per batch size (more rounds for fast models, as :func:`paired_latency`).

    Returns:
        ``{f"batch{b}": candidate ms / original ms}``.
    """
    compute = compute or ComputeSettings(torch.device("cpu"))
    ratios = {}
    with cpu_threads(threads):
        for batch in batch_sizes:
            full, other = paired_latency([original, candidate], input_size, batch_size=batch, device=compute.device,
                                         precision=compute.precision, channels_last=compute.channels_last,
                                         rounds=rounds, min_seconds=min_seconds)
            ratios[f"batch{batch}"] = other / full
    return ratios


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
