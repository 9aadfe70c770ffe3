"""Numeric precision and memory format of every forward pass, resolved in one place.

Training, fine-tuning, evaluation, feature extraction, latency and (later) the pruning
criteria ask this module how to run, so that one setting means the same everywhere.

``train.amp`` (``--amp`` for ``extract``) picks the precision:

* ``auto``: on CUDA, bf16 autocast on GPUs with native bf16 (compute capability 8.0+,
  Ampere and later) and fp16 autocast with loss scaling on older ones; on a CPU with
  native bf16 instructions (x86 ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16``, see
  :func:`cpu_bf16_flags`) bf16 autocast; on any other CPU fp32.
* ``off``: fp32 everywhere. ``bf16`` / ``fp16``: that autocast dtype (fp16 needs CUDA).

Autocast only: weights, gradients and optimiser state stay fp32, and losses are computed
on fp32 features. The old boolean ``train.amp`` maps to ``true -> auto`` (it meant "mixed
precision where the library uses it", and ``true`` was the default) and ``false -> off``.

``train.channels_last`` picks the memory format of the model's 4-D weights and of the
input batches: ``auto`` is channels-last on the CPU (oneDNN's convolutions are faster in
NHWC, in fp32 and bf16 alike) and on CUDA under fp16/bf16 autocast (tensor cores), and
NCHW otherwise; ``true`` / ``false`` force it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Iterator

import torch
from torch import Tensor, nn

AMP_SETTINGS = ("auto", "off", "bf16", "fp16")
PRECISIONS = ("fp32", "bf16", "fp16")
# What the boolean train.amp of configs and checkpoints written before the string setting means now.
LEGACY_AMP = {True: "auto", False: "off"}
CHANNELS_LAST_SETTINGS = ("auto", True, False)
# What ComputeSettings.memory_format_name calls the two layouts (checkpoints record it).
MEMORY_FORMATS = ("contiguous", "channels_last")
# The train.amp value that runs a precision on any device where it runs at all (auto depends on the machine).
AMP_FOR_PRECISION = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
# CPU feature flags (Linux /proc/cpuinfo) that mean bf16 arithmetic in hardware: x86 AVX512-BF16 and
# AMX-BF16, Arm's BF16 extension (Graviton 3, Neoverse V1/N2 and later).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# torch.backends.cpu.get_cpu_capability() values under which ATen runs no vectorised kernels at all.
_SCALAR_CAPABILITIES = ("DEFAULT", "NO AVX")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 feature flags of this CPU (empty when it has none or they cannot be read).

    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read when None). Only Linux exposes the
    flags there; elsewhere the answer is empty and ``auto`` keeps fp32 on the CPU.
    """
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, aarch64
            flags.update(value.split())
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware and torch runs vectorised kernels on it.

    Two signals must agree: a native-bf16 flag in ``/proc/cpuinfo`` and a vector
    capability from ``torch.backends.cpu.get_cpu_capability()`` (``ATEN_CPU_CAPABILITY=default``
    turns vector kernels off, and bf16 would then be emulated element by element).
    """
    return bool(cpu_bf16_flags()) and torch.backends.cpu.get_cpu_capability() not in _SCALAR_CAPABILITIES


def _cuda_has_native_bf16(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (8, 0)


def normalize_amp(amp: str | bool) -> str:
    """A train.amp value (old booleans included) as one of :data:`AMP_SETTINGS`; fp32 means off."""
    if isinstance(amp, bool):
        return LEGACY_AMP[amp]
    if amp == "fp32":
        return "off"
    if amp not in AMP_SETTINGS:
        raise ValueError(f"amp: expected one of {', '.join(AMP_SETTINGS)}, got {amp!r}")
    return amp


def resolve_precision(amp: str | bool, device: str | torch.device) -> str:
    """The precision (``fp32``, ``bf16`` or ``fp16``) that the ``amp`` setting means on ``device``.

    Raises:
        ValueError: fp16 asked for on a CPU.
    """
    amp, device = normalize_amp(amp), torch.device(device)
    if amp == "off":
        return "fp32"
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if _cuda_has_native_bf16(device) else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 autocast (train.amp / --amp) runs on CUDA only, not on {device.type}; "
                         "use bf16, auto or off")
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("bf16 autocast (train.amp / --amp) on a CPU without native bf16 instructions is emulated "
                      "and slower than fp32; use auto or off", stacklevel=2)
    return amp


def autocast_context(device: str | torch.device, precision: str | bool) -> ContextManager:
    """The autocast context of ``precision`` on ``device``: a no-op for fp32.

    ``precision`` is a resolved precision (``fp32``, ``bf16``, ``fp16``) or any train.amp
    setting, resolved here. Every forward pass that should follow the user's precision goes
    through this: the trainer, :func:`~reid_prune.evaluation.extract_features`,
    :func:`~reid_prune.evaluation.measure_latency`, and pruning criteria that score
    channels on data (call it around their ``model(images)``).
    """
    device = torch.device(device)
    precision = precision if precision in PRECISIONS else resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


@contextlib.contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads (0: leave torch's setting), then restore it."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_channels_last(setting: str | bool, device: str | torch.device, precision: str) -> bool:
    """Whether ``train.channels_last`` (``auto``, true, false) means NHWC on ``device`` at ``precision``."""
    if setting not in CHANNELS_LAST_SETTINGS:
        raise ValueError(f"channels_last: expected auto, true or false, got {setting!r}")
    if setting != "auto":
        return bool(setting)
    device = torch.device(device)
    return device.type == "cpu" or (device.type == "cuda" and precision != "fp32")


def model_memory_format(model: nn.Module) -> str:
    """``channels_last``, ``contiguous`` (NCHW) or ``mixed``: the layout of ``model``'s 4-D weights, as they are.

    Weights whose two layouts coincide (1x1 kernels) say nothing and are skipped.
    """
    layouts = set()
    for param in model.parameters():
        if param.dim() != 4:
            continue
        nhwc, nchw = param.is_contiguous(memory_format=torch.channels_last), param.is_contiguous()
        if nhwc != nchw:
            layouts.add("channels_last" if nhwc else "contiguous")
        elif not nhwc:
            layouts.add("strided")  # a view in neither layout
    return layouts.pop() if len(layouts) == 1 else ("mixed" if layouts else "contiguous")


@dataclass(frozen=True)
class ComputeSettings:
    """Where and how forward passes run: device, precision and memory format.

    Build it with :meth:`resolve` (or :meth:`from_config`); ``place`` puts a model on the
    device in the memory format, ``inputs`` does the same for a batch, ``autocast`` is
    the precision's context.
    """

    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def resolve(cls, device: str | torch.device, amp: str | bool = "auto",
                channels_last: str | bool = "auto") -> ComputeSettings:
        device = torch.device(device)
        precision = resolve_precision(amp, device)
        return cls(device, precision, resolve_channels_last(channels_last, device, precision))

    @classmethod
    def from_config(cls, train: Any, device: str | torch.device) -> ComputeSettings:
        """From a :class:`~reid_prune.config.TrainConfig` (``amp``, ``channels_last``) on ``device``."""
        return cls.resolve(device, train.amp, train.channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def memory_format_name(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def autocast(self) -> ContextManager:
        return autocast_context(self.device, self.precision)

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` (in place) to the device and memory format; a no-op for tensors already there.

        Call it again after surgery: pruned layers are built anew, in NCHW.
        """
        return model.to(self.device, memory_format=self.memory_format)

    def inputs(self, images: Tensor) -> Tensor:
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def describe(self) -> dict[str, Any]:
        """What a latency or throughput figure was measured with."""
        return {"device": self.device.type, "precision": self.precision, "memory_format": self.memory_format_name,
                "threads": torch.get_num_threads()}


def describe_text(setting: dict[str, Any]) -> str:
    """``cpu, bf16, channels_last, 2 threads`` from :meth:`ComputeSettings.describe`."""
    threads = setting.get("threads")
    text = f"{setting['device']}, {setting['precision']}, {setting['memory_format']}"
    if setting["device"] == "cpu" and threads:
        text += f", {threads} thread{'s' if threads > 1 else ''}"
    return text
