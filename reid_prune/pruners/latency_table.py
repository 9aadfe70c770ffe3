"""Measured latencies of standalone layers on this device, cached on disk: the lookup table of a latency budget.

A latency budget (NetAdapt, Yang et al., ECCV 2018; HALP, Shen et al., NeurIPS 2022) needs the
time each layer takes at many widths on the device the model is deployed on. This module
measures one layer *signature* (a conv's kernel, stride, padding, dilation, groups and bias
and its input's spatial size; a linear's bias and input shape) at given (in, out) widths, as
a standalone op, and keeps every measurement in a JSON file per :class:`LatencySetting`:

    $REID_PRUNE_CACHE/latency/<key>.json   (default ~/.cache/reid_prune/latency/)

The key is a hash of everything that changes a timing: the device and its name (the CPU
model string or the CUDA device name), torch's version, the precision, the memory format,
the number of CPU threads, the batch size and the network's input size. Within a file each
op is keyed by its signature and widths, so models that share layers share measurements and
a second prune of the same model measures nothing.

Nothing read from a file is trusted: a value that is not a plausible time (finite, in
[:data:`MIN_MS`, :data:`MAX_MS`] milliseconds per image) is dropped, with a warning, and timed
again when needed; :class:`~.latency.LatencyModel` also re-times the whole network on every run
and re-times a table that disagrees with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import math
import statistics
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..evaluation.complexity import synchronize
from ..layers import LayerKind, kind_named, kind_of
from ..outputs import OutputPathError, atomic_path
from ..precision import ComputeSettings, autocast_context
from ..runtime import check_cache_dir

FORMAT = "reid_prune/latency/1"
# A standalone op is timed until it has run MIN_RUNS times and for MIN_SECONDS, or MAX_RUNS times;
# the median is kept. Short ops get more runs, because their timings are the noisiest.
MIN_RUNS, MAX_RUNS, MIN_SECONDS = 3, 25, 0.05
# A stored time outside [MIN_MS, MAX_MS] ms per image is no measurement of a layer (1e-7 ms: 0.1 ns;
# 1e6 ms: a thousand seconds): it is dropped and timed again.
MIN_MS, MAX_MS = 1e-7, 1e6
_ACTIVATION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_name(device: torch.device) -> str:
    """The CPU model string (``/proc/cpuinfo``'s model name) or the CUDA device's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class LatencySetting:
    """Everything a timing depends on besides the layer: the cache key of a :class:`LatencyTable`.

    ``threads`` is the CPU intra-op thread count (reported by ``eval`` too); ``input_size`` is
    the network's (H, W), kept in the key although each op records its own input size.
    """

    device: str
    device_name: str
    torch_version: str
    precision: str
    memory_format: str
    threads: int
    batch_size: int
    input_size: tuple[int, int]

    @classmethod
    def current(cls, compute: ComputeSettings, *, batch_size: int, input_size: tuple[int, int],
                threads: int = 0) -> LatencySetting:
        """The setting of ``compute`` on this machine; ``threads`` 0 means torch's current thread count."""
        return cls(str(compute.device), device_name(compute.device), torch.__version__, compute.precision,
                   compute.memory_format_name, threads or torch.get_num_threads(), batch_size, tuple(input_size))

    @property
    def compute(self) -> ComputeSettings:
        """The device, precision and memory format to time in."""
        return ComputeSettings(torch.device(self.device), self.precision, self.memory_format == "channels_last")

    def key(self) -> str:
        """A short hash of every field: the cache file's name."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Signature:
    """What a layer's time depends on besides its widths.

    Attributes:
        kind: the name of the layer's kind in :mod:`reid_prune.layers`: ``conv`` or ``linear``.
        kernel, stride, padding, dilation: a conv's (h, w) pairs; () for a linear.
        groups: a conv's groups (1 for a linear).
        bias: whether the layer adds a bias.
        spatial: the input's shape without batch and channels: (H, W) for a conv, the leading
            dimensions of a linear's input (() for a (B, F) input).
    """

    kind: str
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    bias: bool
    spatial: tuple[int, ...]

    @classmethod
    def of(cls, module: nn.Module, in_shape: tuple[int, ...]) -> Signature:
        """The signature of a Conv2d or Linear run on one image's input of shape ``in_shape`` (no batch).

        Raises:
            ValueError: the module's kind (:mod:`reid_prune.layers`) is not timed, or the
                module cannot be timed standalone (a conv with string or non-zero padding).
        """
        kind = kind_of(module)
        if kind is None or kind.timing is None:
            raise ValueError(f"latency tables time convs and linears, got {type(module).__name__}")
        spatial = in_shape[1:] if kind.channels_dim == 1 else in_shape[:-1]
        return cls(kind.name, **kind.timing(module), spatial=tuple(spatial))

    @property
    def layer(self) -> LayerKind:
        """The layer kind this signature times (:func:`reid_prune.layers.kind_named` of ``kind``)."""
        return kind_named(self.kind)

    def key(self, in_channels: int, out_channels: int) -> str:
        """``conv k3x3 s1x1 p1x1 d1x1 g1 nobias @64x32: 64->128``: the op's entry in a table."""
        pairs = " ".join(f"{n}{'x'.join(map(str, v))}" for n, v in
                         (("k", self.kernel), ("s", self.stride), ("p", self.padding), ("d", self.dilation)) if v)
        where = "x".join(map(str, self.spatial)) or "-"
        return (f"{self.kind} {pairs + ' ' if pairs else ''}g{self.groups} {'bias' if self.bias else 'nobias'} "
                f"@{where}: {in_channels}->{out_channels}")

    def op(self, in_channels: int, out_channels: int) -> nn.Module:
        """The standalone op timed for this signature: the conv or linear alone.

        Timing each conv with its BatchNorm and ReLU predicted measured ratios no better
        (docs/pruners.md, "Latency budgets"): the elementwise work is left to the calibration.
        """
        fields = {k: v for k, v in asdict(self).items() if k not in ("kind", "spatial")}
        return self.layer.op(in_channels, out_channels, **fields)


def time_op(signature: Signature, in_channels: int, out_channels: int, setting: LatencySetting) -> float:
    """Median milliseconds per image of ``signature``'s op at these widths, timed standalone in ``setting``.

    The input is in the dtype the network's activations have under the setting's autocast
    (bf16 for bf16 autocast), so the op does not pay a cast the network does not pay.
    """
    compute = setting.compute
    op = compute.place(signature.op(in_channels, out_channels)).eval()
    channels_first = signature.layer.channels_dim == 1
    shape = (setting.batch_size, in_channels, *signature.spatial) if channels_first else \
        (setting.batch_size, *signature.spatial, in_channels)
    x = torch.randn(shape, device=compute.device, dtype=_ACTIVATION_DTYPES[setting.precision])
    if channels_first and x.dim() == 4:  # the memory format applies to (N, C, H, W) tensors only
        x = x.contiguous(memory_format=compute.memory_format)
    times: list[float] = []
    with torch.inference_mode(), autocast_context(compute.device, setting.precision):
        op(x)  # warm-up: first-call allocations and kernel selection
        started = time.perf_counter()
        while len(times) < MAX_RUNS and (len(times) < MIN_RUNS or time.perf_counter() - started < MIN_SECONDS):
            synchronize(compute.device)
            start = time.perf_counter()
            op(x)
            synchronize(compute.device)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / setting.batch_size


def cache_folder() -> Path:
    """``$REID_PRUNE_CACHE/latency``, default ``~/.cache/reid_prune/latency``, checked to be writable.

    Raises:
        OutputPathError (a ValueError): the folder cannot be written (:func:`~reid_prune.runtime.check_cache_dir`).
    """
    return check_cache_dir("latency")


def plausible_ms(value: object) -> bool:
    """Whether a stored value can be a time in milliseconds per image: a finite number in [MIN_MS, MAX_MS]."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and MIN_MS <= value <= MAX_MS)


class LatencyTable:
    """Every measured op and network latency of one :class:`LatencySetting`, backed by one JSON file.

    Args:
        setting: what the timings are measured in.
        folder: where the file lives (default :func:`cache_folder`); None keeps the table in memory only.

    ``ops`` maps :meth:`Signature.key` to milliseconds per image; ``networks`` maps a
    network's description hash to its measured milliseconds per image. ``measured`` counts the
    timings this object made (0 when everything came from the file). A file that cannot be read
    is measured again, and so is every stored value that is not a plausible time
    (:func:`plausible_ms`: NaN, infinite, zero, negative, not a number): each case warns once.

    Raises:
        OutputPathError (a ValueError): the table's path is a folder, which no table can be written over.
    """

    def __init__(self, setting: LatencySetting, folder: Path | None = None) -> None:
        self.setting = setting
        self.path = folder / f"{setting.key()}.json" if folder is not None else None
        self.ops: dict[str, float] = {}
        self.networks: dict[str, float] = {}
        self.measured = 0
        self.dirty = False  # the file differs from what is in memory (entries dropped)
        if self.path is None or not self.path.exists():
            return
        if not self.path.is_file():  # found now, not when the timed table is saved over it
            raise OutputPathError(f"latency table '{self.path}' is a folder, not a file: remove it (the cache "
                                  "folder only holds tables)")
        try:
            stored = json.loads(self.path.read_text())
            if stored["format"] != FORMAT or stored["setting"] != json.loads(json.dumps(asdict(setting))):
                return  # another format or setting (a hash collision): timed anew, written over
            ops, networks = dict(stored["ops"]), dict(stored["networks"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"latency table '{self.path}' cannot be read ({type(exc).__name__}); timing it again",
                          UserWarning, stacklevel=2)
            return
        self.ops = {str(k): float(v) for k, v in ops.items() if plausible_ms(v)}
        self.networks = {str(k): float(v) for k, v in networks.items() if plausible_ms(v)}
        bad = [(k, v) for k, v in [*ops.items(), *networks.items()] if not plausible_ms(v)]
        if bad:
            warnings.warn(f"latency table '{self.path}': {len(bad)} stored timing(s) are no plausible time "
                          f"(finite, {MIN_MS:g} to {MAX_MS:g} ms per image; e.g. {bad[0][0]!r}: {bad[0][1]!r}); "
                          "dropped and timed again where needed", UserWarning, stacklevel=2)
            self.dirty = True  # saved without them even when nothing else changes

    def forget(self, keys: Iterable[str]) -> None:
        """Drop these op entries (stale ones), so :meth:`op_ms` times them again."""
        for key in keys:
            self.dirty |= self.ops.pop(key, None) is not None

    def op_ms(self, signature: Signature, in_channels: int, out_channels: int) -> float:
        """The op's milliseconds per image, measured now unless the table has it."""
        key = signature.key(in_channels, out_channels)
        if key not in self.ops:
            self.ops[key] = time_op(signature, in_channels, out_channels, self.setting)
            self.measured += 1
        return self.ops[key]

    def save(self) -> None:
        """Write the table atomically (a temporary file renamed over the old one); no-op in memory."""
        if self.path is None:
            return
        with atomic_path(self.path) as tmp, open(tmp, "w") as fh:
            json.dump({"format": FORMAT, "setting": asdict(self.setting), "ops": self.ops,
                       "networks": self.networks}, fh, indent=1, sort_keys=True, allow_nan=False)
