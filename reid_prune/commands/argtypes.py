"""argparse pieces shared by the commands: value types (argparse names the flag in their errors) and the
precision and memory-format options and their help."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def positive_number(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def fraction_list(text: str) -> list[float]:
    """Comma-separated distinct fractions in (0, 1), e.g. ``0.1,0.3,0.5``."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.1,0.3,0.5, got {text!r}") from None
    bad = [v for v in values if not 0 < v < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"each rate must lie in (0, 1), got {bad[0]:g}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a rate is given twice in {text!r}")
    return values


def precision_help(prefix: str = "") -> str:
    """The help paragraph on train.amp and train.channels_last; ``prefix`` is ``base.`` for a bench file."""
    key = f"{prefix}train"
    return f"""\
precision and memory format ({key}.amp, {key}.channels_last; one choice for
training, fine-tuning, evaluation and latency):
  {key}.amp=auto (default) picks bf16 autocast on a CPU with native bf16 instructions
    (avx512_bf16 or amx_bf16 in /proc/cpuinfo, Arm bf16), fp32 on other CPUs, and bf16
    (compute capability 8.0+) or fp16 autocast on CUDA. Weights and optimiser state stay
    fp32. Turn it off with --set {key}.amp=off (fp32); force with bf16 or fp16 (CUDA).
  {key}.channels_last=auto (default) uses the channels-last memory format on the CPU and
    on CUDA under autocast; --set {key}.channels_last=false keeps NCHW.
  Configs from before these settings: amp true means auto, false means off.
"""


PRECISION_HELP = precision_help()


def _channels_last_arg(text: str) -> str | bool:
    """--channels-last auto|true|false, as train.channels_last takes it."""
    values = {"auto": "auto", "true": True, "false": False}
    if text not in values:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")
    return values[text]


def add_compute_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str, *,
                     cpu_only: bool = False) -> None:
    """--amp and --channels-last for the commands that take no config (``cpu_only``: no fp16, no CUDA)."""
    choices, cuda, where = (("auto", "off", "bf16"), "", "on the CPU") if cpu_only else (
        ("auto", "off", "bf16", "fp16"), "bf16/fp16 on CUDA, ", "on the CPU and on CUDA under autocast")
    parser.add_argument("--amp", default="auto", choices=choices,
                        help=f"precision of {what}: auto (default) = bf16 autocast on a CPU with native bf16, "
                        f"{cuda}else fp32; off = fp32")
    parser.add_argument("--channels-last", default="auto", type=_channels_last_arg, metavar="{auto,true,false}",
                        help=f"memory format of {what}: auto (default) = channels-last {where}; false = NCHW")
