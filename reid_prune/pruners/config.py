"""The ``prune`` section of a run config: :class:`PruneConfig`, declared and checked by the pruning layer itself.

Its fields are the settings of :class:`~reid_prune.pruners.Pruner` that a config can give,
spelled as the constructor's keyword arguments (scikit-learn's rule: a pruner's parameters
are exactly its constructor's arguments), plus the job's fine-tuning settings.
:meth:`Pruner.from_config <reid_prune.pruners.Pruner.from_config>` builds a pruner from it
by name, so a new setting is one field here and one argument there (docs/architecture.md).
:mod:`reid_prune.config` composes this section into the run config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config_fields import ConfigError, choice, number_range, require, tagged
from ..distillation import DistillConfig
from .allocation import ALLOCATIONS
from .groups import SCOPES
from .options import build_options
from .registry import get_method


@dataclass
class PruneConfig:
    method: str = "haoli"
    # Fraction of channels pruned in every group; or the fractions of MACs / parameters / measured latency kept.
    rate: float | None = number_range(None, 0, 1, high_open=True, what="a prune fraction")
    # {group name: fraction pruned}, e.g. the layer_rates.yaml of reid-prune sensitivity; unnamed groups keep all
    layer_rates: dict[str, float] | None = tagged(None, "later")
    target_macs: float | None = number_range(None, 0, 1, low_open=True, what="a kept fraction")
    target_params: float | None = number_range(None, 0, 1, low_open=True, what="a kept fraction")
    target_latency: float | None = tagged(number_range(None, 0, 1, low_open=True, what="a kept fraction"), "later")
    # A latency target: the batch sizes whose mean kept fraction it is (null = eval.latency_batch_sizes), the CPU
    # threads timed (null = torch's current count, as eval reports) and the measured re-plans (0 = prediction only).
    latency_batch_sizes: list[int] | None = tagged(number_range(None, 1), "later")
    latency_threads: int | None = tagged(number_range(None, 1), "later")
    latency_feedback: int = tagged(number_range(3, 0), "later")
    # auto = all (residual streams too) for a MACs, params or latency target, internal for rates (docs/pruners.md)
    scope: str = choice("auto", "auto", *SCOPES)
    # uniform | global | layer_rates; null = the method's own default (docs/pruners.md)
    allocation: str | None = tagged(None, "later")
    include_stem: bool = True
    include_downsample: bool = True
    include_last_stage: bool = False
    min_channels: int = number_range(1, 1)
    round_to: int = number_range(1, 1)
    finetune_epochs: int = number_range(0, 0)
    # Optimiser steps after the source in all, the method's own training counted (its steps between rounds or
    # layers; for methods that prune while training, that training); fine-tuning takes the rest. Instead of
    # finetune_epochs: an equal training budget for every method (docs/bench.md, "Protocol v2").
    train_steps: int | None = tagged(number_range(None, 1), "later")
    finetune_lr: float | None = number_range(None, 0, low_open=True)  # while fine-tuning (default: train.lr / 10)
    # Fine-tune (and train between rounds) with distillation from the unpruned model or distill.teacher; null = off.
    distill: DistillConfig | None = tagged(None, "later")
    data_batches: int = number_range(8, 1)  # training batches used by data-driven criteria
    options: dict[str, Any] = field(default_factory=dict)  # method-specific settings

    @property
    def is_budget(self) -> bool:
        """Whether the target is a fraction of the MACs, the parameters or the latency kept."""
        return any(v is not None for v in (self.target_macs, self.target_params, self.target_latency))


def check_prune(p: PruneConfig) -> None:
    """The rules between the prune keys: per-group rates, latency settings, the method, its options and the allocation.

    Ranges and choices of single keys are checked with the rest of the config
    (:func:`~reid_prune.config_fields.check_fields`).

    Raises:
        ConfigError: naming the first key that is wrong and what it accepts.
    """
    for group, rate in (p.layer_rates or {}).items():
        require(isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1,
                f"prune.layer_rates.{group}", f"a prune fraction must lie in [0, 1), got {rate!r}")
    try:
        method = get_method(p.method)
    except ValueError as exc:
        raise ConfigError(f"config key prune.method: {exc}") from None
    build_options(method.options, p.options, "prune.options.")
    require(p.latency_batch_sizes is None or bool(p.latency_batch_sizes), "prune.latency_batch_sizes",
            "give at least one batch size, or null for eval.latency_batch_sizes")
    for key in ("latency_batch_sizes", "latency_threads"):
        require(getattr(p, key) is None or p.target_latency is not None, f"prune.{key}",
                "applies to a latency target only: set prune.target_latency (--target-latency), or leave it unset")
    require(p.train_steps is None or p.finetune_epochs == 0, "prune.train_steps",
            f"counts all the training after the source, fine-tuning included: leave prune.finetune_epochs at 0 "
            f"(it is {p.finetune_epochs}), or give prune.finetune_epochs alone (on the command line: --train-steps "
            "or --finetune-epochs, not both)")
    require(p.allocation is None or p.allocation in ALLOCATIONS, "prune.allocation",
            f"expected one of {', '.join(ALLOCATIONS)} or null (the method's default), got {p.allocation!r}")
