"""ONNX export of a checkpoint (pruned or not), checked against PyTorch with onnxruntime.

``reid-prune export --checkpoint CKPT --format onnx --output model.onnx`` writes a
graph with one input ``images`` (B, 3, H, W) float32, normalised as in training, and
one output ``features`` (B, D): the retrieval feature ``model(x)`` returns (after the
BNNeck), not L2-normalised. The batch is fixed at 1 unless ``dynamic_batch``.

The model is exported with torch's ``torch.export``-based exporter (``dynamo=True``,
the default since torch 2.9; it needs ``onnxscript``). Before the file is put in
place, onnxruntime runs it on random inputs and, when given, on real images: the
largest absolute difference from PyTorch's features must stay under the tolerance
(1e-4), or nothing is written. onnx, onnxruntime and onnxscript are the optional
extra ``export``: ``pip install 'reid-prune[export]'``.
"""

from __future__ import annotations

import importlib
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..data.transforms import build_transforms
from ..evaluation import measure_latency
from ..outputs import atomic_path, check_output_file
from ..precision import ComputeSettings
from .extract import ImageFiles, checkpoint_preprocessing, list_images

EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
FORMATS = ("onnx",)
TOLERANCE = 1e-4
# How many images of --images DIR the parity check runs on.
PARITY_IMAGES = 16


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says how to install it."""


class ParityError(RuntimeError):
    """The exported model's features differ from PyTorch's by more than the tolerance."""


def require_export_packages() -> None:
    """Import onnx, onnxruntime and onnxscript, or raise :class:`MissingExtraError` naming the missing ones."""
    missing = []
    for name in EXPORT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtraError(
            f"ONNX export needs {', '.join(EXPORT_PACKAGES)}; not installed: {', '.join(missing)}. "
            "Install them with: pip install 'reid-prune[export]'"
        )


def export_onnx(model: nn.Module, output: str | os.PathLike, *, input_size: tuple[int, int] = (256, 128),
                dynamic_batch: bool = False) -> Path:
    """Write ``model`` (on the CPU, in eval mode) as ONNX to ``output``, weights inside the file, atomically.

    Args:
        model: maps (B, 3, H, W) to (B, D).
        output: the .onnx file.
        input_size: (H, W) of the input.
        dynamic_batch: leave the batch dimension free; otherwise it is 1.
    """
    require_export_packages()
    model = model.cpu().eval()
    height, width = input_size
    # A batch of 2 for a dynamic batch: torch.export specialises dimensions of size 1.
    example = torch.randn(2 if dynamic_batch else 1, 3, height, width)
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with warnings.catch_warnings():
        # onnxscript's optimiser warns about its own internals; nothing a user can act on.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                    output_names=["features"], dynamic_shapes=dynamic_shapes, verbose=False)
    with atomic_path(output) as tmp:
        program.save(tmp, external_data=False)
    return Path(output)


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session with ``threads`` intra-op threads (default: torch's thread count)."""
    require_export_packages()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_feature_difference(model: nn.Module, session, images: torch.Tensor) -> float:
    """Largest |PyTorch - onnxruntime| over the features of ``images`` (N, 3, H, W).

    Images go one at a time when the session's batch dimension is fixed.
    """
    fixed_batch = session.get_inputs()[0].shape[0]
    chunks = images.split(fixed_batch) if isinstance(fixed_batch, int) else [images]
    worst = 0.0
    with torch.inference_mode():
        for chunk in chunks:
            expected = model(chunk).numpy()
            actual = session.run(None, {"images": chunk.numpy()})[0]
            worst = max(worst, float(np.abs(actual - expected).max()))
    return worst


def onnxruntime_latency(session, input_size: tuple[int, int], *, batch_size: int = 1, warmup: int = 3,
                        repeats: int = 10) -> float:
    """Median milliseconds per image of ``session`` on random (batch_size, 3, H, W) inputs."""
    x = np.random.default_rng(0).standard_normal((batch_size, 3, *input_size), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {"images": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / batch_size


def _real_images(source: str | os.PathLike, input_size: tuple[int, int], mean: Sequence[float],
                 std: Sequence[float]) -> torch.Tensor:
    """The first PARITY_IMAGES readable images of ``source`` (N, 3, H, W), preprocessed as for evaluation."""
    dataset = ImageFiles(list_images(source), build_transforms(*input_size, train=False, mean=mean, std=std))
    images = []
    for index in range(len(dataset)):
        image, _, _ = dataset[index]
        if image is not None:
            images.append(image)
        if len(images) == PARITY_IMAGES:
            break
    if not images:
        raise ValueError(f"--images: none of the {len(dataset)} images in '{source}' could be read")
    return torch.stack(images)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    fmt: str = "onnx",
    input_size: tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    images: str | os.PathLike | None = None,
    tolerance: float = TOLERANCE,
    latency: bool = True,
    threads: int | None = None,
    amp: str | bool = "auto",
    channels_last: str | bool = "auto",
) -> dict[str, Any]:
    """Export ``checkpoint`` to ``output``, check parity with onnxruntime, time both runtimes on the CPU.

    ``input_size`` defaults to the checkpoint's training size (its stored config), else
    256x128. Parity runs on 4 random images, and on up to 16 images of ``images`` (a
    folder or list file) when given. The file is put in place only when every
    difference is under ``tolerance``; otherwise :class:`ParityError` is raised.
    Both runtimes are timed with ``threads`` intra-op threads (default: torch's current count).
    PyTorch is timed in fp32, as the ONNX graph computes, in the memory format that
    ``channels_last`` resolves to on the CPU; when ``amp`` resolves to bf16 there, its bf16
    latency is timed side by side (``pytorch_bf16``).

    Returns ``{"output", "size_bytes", "input_size", "dynamic_batch", "parity": {"random": diff,
    "images": diff | None, "num_images": int}, "tolerance", "threads",
    "latency_ms": {"pytorch": ms, "onnxruntime": ms[, "pytorch_bf16": ms]} (per image, batch 1) | None,
    "latency_setting": {"device", "precision", "memory_format", "threads"} | None}``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    check_output_file(output, "--output", inputs=[checkpoint])
    require_export_packages()
    ckpt = read_checkpoint(checkpoint)
    stored_size, mean, std = checkpoint_preprocessing(ckpt)
    size = tuple(input_size) if input_size is not None else stored_size
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"--input-size: expected two positive numbers H W, got {size}")
    model = model_from_checkpoint(ckpt).eval()
    real = _real_images(images, size, mean, std) if images is not None else None
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    threads = threads or torch.get_num_threads()
    compute = ComputeSettings.resolve("cpu", amp, channels_last)
    report: dict[str, Any] = {"output": str(output), "input_size": size, "dynamic_batch": dynamic_batch,
                              "tolerance": tolerance, "threads": threads}
    with atomic_path(output) as tmp:
        export_onnx(model, tmp, input_size=size, dynamic_batch=dynamic_batch)
        session = onnx_session(tmp, threads)
        random_images = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0))
        parity = {"random": max_feature_difference(model, session, random_images), "images": None, "num_images": 0}
        if real is not None:
            parity["images"] = max_feature_difference(model, session, real)
            parity["num_images"] = len(real)
        report["parity"] = parity
        worst = max(d for d in (parity["random"], parity["images"]) if d is not None)
        if worst >= tolerance:
            raise ParityError(
                f"ONNX parity check failed: onnxruntime's features differ from PyTorch's by up to {worst:.2e} "
                f"(tolerance {tolerance:.0e}); {output} was not written"
            )
        report["latency_ms"] = report["latency_setting"] = None
        if latency:
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                pytorch = measure_latency(model, size, batch_sizes=(1,), device="cpu",
                                          precision=list(dict.fromkeys(("fp32", compute.precision))),
                                          channels_last=compute.channels_last)
                report["latency_ms"] = {"pytorch": pytorch["fp32"]["batch1"],
                                        "onnxruntime": onnxruntime_latency(session, size)}
                if compute.precision != "fp32":
                    report["latency_ms"][f"pytorch_{compute.precision}"] = pytorch[compute.precision]["batch1"]
                report["latency_setting"] = {**compute.describe(), "precision": "fp32"}
            finally:
                torch.set_num_threads(torch_threads)
        del session  # release the file before the rename (needed on Windows)
    report["size_bytes"] = Path(output).stat().st_size
    return report
