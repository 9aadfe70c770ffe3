"""A latency budget end to end: predict with the lookup table, then measure the plan and correct it.

The table of :mod:`.latency` predicts the kept fraction of latency with an error of a few
hundredths (docs/pruners.md, "Latency budgets"). NetAdapt (Yang et al., ECCV 2018) measures
every proposal on the device; here the planner's proposal is measured: after planning, a
copy of the model with the planned widths and random weights
(:func:`~reid_prune.checkpoint.apply_widths`; timings do not depend on the weights) is timed
against the original, interleaved, median of rounds (:func:`~reid_prune.evaluation.paired_latency`),
and the fraction handed to the planner (the *aim*) is corrected by the ratio of predicted to
measured, a few times, until the measured ratio is within :data:`TOLERANCE` of the target.
The aim that measured best is kept for later re-plans (iterative and soft schedules plan
again on new scores) without measuring again.

Under torchrun only the main process times anything; the others receive its numbers, so
every rank plans the same widths.

The pruned model's latency ratio is measured once more after surgery (the prune job's
``achieved``); :func:`check_latency_target` warns when it lies more than :data:`MISS_TOLERANCE`
from the target, so no run misses its target without saying so.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..checkpoint import apply_widths, module_widths
from ..distributed import broadcast_object, is_main_process
from ..evaluation.complexity import latency_ratios
from ..precision import ComputeSettings
from .cost import CostModel
from .latency import LatencyCost, widths_for
from .latency_table import cache_folder

# Stop correcting when the measured ratio is this close to the target: half of the +-0.05 a user
# may expect after surgery, the other half is left to the noise of the final measurement.
TOLERANCE = 0.025
TIMING_ROUNDS = 7  # interleaved passes of the original and the planned model, per batch size
# A finished model whose measured ratio lies farther than this from the target missed it: the +-0.05 a user may
# expect after surgery (TOLERANCE for the plan, as much again for the noise of a second measurement).
MISS_TOLERANCE = 2 * TOLERANCE


def check_latency_target(target: float, measured: Mapping[str, float]) -> dict[str, Any]:
    """Compare a finished model's measured latency ratios ({``batch{b}``: ratio}) with the target fraction.

    Warns (one line: the target, the mean and per-batch ratios, what to do) when the mean ratio lies
    more than :data:`MISS_TOLERANCE` from ``target``. Returns ``latency_target_missed`` (bool) and
    ``latency_tolerance`` for the report.
    """
    mean = sum(measured.values()) / len(measured)
    missed = abs(mean - target) > MISS_TOLERANCE
    if missed:
        per_batch = ", ".join(f"{batch} {ratio:.3f}" for batch, ratio in measured.items())
        warnings.warn(f"latency target {target:g} missed: the pruned model keeps {mean:.3f} of the latency measured "
                      f"after surgery ({per_batch}), more than {MISS_TOLERANCE:g} from the target. Timings on a busy "
                      "machine are noisy: prune again on a quiet one, or with more plans measured "
                      "(prune.latency_feedback)", UserWarning, stacklevel=2)
    return {"latency_target_missed": missed, "latency_tolerance": MISS_TOLERANCE}


@dataclass
class Step:
    """One measured plan: the fraction asked of the planner, what the table predicts for it, what was measured."""

    aim: float
    predicted: float
    measured: float


def measured_fraction(model: nn.Module, widths: Mapping[str, list[int]], compute: ComputeSettings, *,
                      batch_sizes: Sequence[int], threads: int, input_size: tuple[int, int]) -> float:
    """Measured latency of ``model`` resized to ``widths`` over ``model``'s own, averaged over the batch sizes.

    ``widths``: per-module widths as :func:`~reid_prune.checkpoint.module_widths` gives them.
    """
    resized = apply_widths(copy.deepcopy(model), dict(widths))
    ratios = latency_ratios(model, resized, input_size, batch_sizes=batch_sizes, compute=compute, threads=threads,
                            rounds=TIMING_ROUNDS)
    return sum(ratios.values()) / len(ratios)


def plan_to_measured(plan: Callable[[float], dict[str, int]], predict: Callable[[Mapping[str, int]], float],
                     measure: Callable[[Mapping[str, int]], float], target: float, *, rounds: int,
                     lowest: float, tolerance: float = TOLERANCE) -> tuple[dict[str, int], list[Step]]:
    """Plan, measure and correct the aim until the measured fraction is within ``tolerance`` of ``target``.

    Each round plans for the aim and measures the plan. The next aim is read off the line
    through the two measured plans closest to the target on either side (measured against
    predicted: regula falsi), or, before one plan on each side is known, set to
    ``target * predicted / measured`` (the prediction's error, as a ratio, is assumed to hold
    near the plan). Aims are kept within [``lowest``, 1], the range a plan can reach.

    Args:
        plan: aim -> keep counts whose predicted fraction is about the aim.
        predict, measure: keep counts -> predicted / measured fraction of the latency kept.
        target: the fraction of measured latency to keep.
        rounds: measured plans at most (>= 1).
        lowest: the predicted fraction with every group at its minimum.

    Returns:
        (the keep counts whose measured fraction came closest to ``target``, every step in order).
    """
    aim, steps, best = target, [], None
    for _ in range(rounds):
        counts = plan(aim)
        step = Step(aim, predict(counts), measure(counts))
        steps.append(step)
        if best is None or abs(step.measured - target) < abs(best[1].measured - target):
            best = (counts, step)
        if abs(step.measured - target) <= tolerance:
            break
        aim = min(1.0, max(lowest, _next_aim(steps, target)))
        if aim == step.aim:  # held at a bound: planning again would give the same widths
            break
    return best[0], steps


def _next_aim(steps: Sequence[Step], target: float) -> float:
    """The predicted fraction expected to measure ``target``, from the plans measured so far."""
    below = [s for s in steps if s.measured < target]
    above = [s for s in steps if s.measured > target]
    if below and above:
        low = max(below, key=lambda s: s.measured)
        high = min(above, key=lambda s: s.measured)
        return low.predicted + (target - low.measured) * (high.predicted - low.predicted) / (high.measured - low.measured)
    return target * steps[-1].predicted / steps[-1].measured


class LatencyBudget:
    """The latency side of a :class:`~.base.Pruner` whose target is ``target_latency``.

    Args:
        target: fraction of the measured latency to keep, in (0, 1].
        compute: device, precision and memory format timed (None: the model's device with
            ``train.amp`` and ``train.channels_last`` at auto, as ``eval`` measures by default).
        batch_sizes: the batch sizes whose mean kept fraction is the target.
        threads: CPU intra-op threads while timing (0: torch's current count, what ``eval`` reports).
        feedback: measured plans at most (0: trust the prediction).
        input_size, min_channels, round_to: as the pruner's.

    Raises:
        ValueError: empty or non-positive batch sizes, negative threads or feedback, or a cache folder
            (``$REID_PRUNE_CACHE/latency``) that cannot be written.
    """

    def __init__(self, target: float, *, compute: ComputeSettings | None = None,
                 batch_sizes: Sequence[int] = (1, 32), threads: int = 0, feedback: int = 3,
                 input_size: tuple[int, int] = (256, 128), min_channels: int = 1, round_to: int = 1) -> None:
        if not batch_sizes or any(b < 1 for b in batch_sizes):
            raise ValueError(f"latency_batch_sizes: give batch sizes >= 1, got {list(batch_sizes)}")
        if threads < 0 or feedback < 0:
            raise ValueError(f"latency_threads and latency_feedback must be >= 0, got {threads} and {feedback}")
        cache_folder()  # a $REID_PRUNE_CACHE that cannot hold the table stops here, not after timing it
        self.target, self.compute, self.batch_sizes = target, compute, tuple(batch_sizes)
        self.threads, self.feedback, self.input_size = threads, feedback, tuple(input_size)
        self.min_channels, self.round_to = min_channels, round_to
        self.cost: LatencyCost | None = None  # the table of the model at setup, once prepare() ran
        self.aim: float | None = None  # the fraction to plan for, learned from measurements
        self.steps: list[Step] = []
        self.predicted: float | None = None  # the plan's predicted fraction kept
        self.predicted_ms: dict[str, float] = {}  # and its predicted ms per image at each batch size
        self.seconds: dict[str, float] = {}
        self._built_for = ""

    def prepare(self, model: nn.Module, full_cost: CostModel) -> LatencyCost:
        """The model's latency table (built, or read from the cache), once per model width."""
        widths = json.dumps(module_widths(model), sort_keys=True)
        if self.cost is None or widths != self._built_for:
            if self.compute is None:
                self.compute = ComputeSettings.resolve(next(model.parameters()).device)
            started = time.perf_counter()
            self.cost = LatencyCost(model, self.compute, batch_sizes=self.batch_sizes, threads=self.threads,
                                    input_size=self.input_size, cost=full_cost, min_channels=self.min_channels,
                                    round_to=self.round_to)
            self.seconds = {"table": round(time.perf_counter() - started, 3)}
            self._built_for, self.aim, self.steps = widths, None, []
        return self.cost

    def plan(self, model: nn.Module, cost: CostModel, plan: Callable[[float], dict[str, int]],
             lowest: Mapping[str, int], *, measure: bool) -> dict[str, int]:
        """Keep counts for the target: planned for the corrected aim, measured and corrected when ``measure``.

        Args:
            model: the model as it is now (at its widths at setup when ``measure``).
            cost: its :class:`~.cost.CostModel`, to turn keep counts into module widths.
            plan: aim -> keep counts (the allocation, with the latency table).
            lowest: every group at its minimum, the most a plan can cut.
            measure: measure and correct now, unless an aim was learned already; otherwise
                plan for the learned aim (or the target) without measuring.
        """
        started = time.perf_counter()
        if measure and self.feedback and self.aim is None:
            def measured(counts: Mapping[str, int]) -> float:
                timing = time.perf_counter()
                value = None
                if is_main_process():
                    value = measured_fraction(model, widths_for(cost, counts), self.compute,
                                              batch_sizes=self.batch_sizes, threads=self.threads,
                                              input_size=self.input_size)
                value = broadcast_object(value)
                self.seconds["feedback"] = round(self.seconds.get("feedback", 0.0) + time.perf_counter() - timing, 3)
                return value

            counts, self.steps = plan_to_measured(plan, self.cost.fraction, measured, self.target,
                                                  rounds=self.feedback, lowest=self.cost.fraction(lowest))
            self.aim = min(self.steps, key=lambda s: abs(s.measured - self.target)).aim
        else:
            counts = plan(self.aim if self.aim is not None else self.target)
        self.seconds["plan"] = round(self.seconds.get("plan", 0.0) + time.perf_counter() - started, 3)
        self.predicted, self.predicted_ms = self.cost.fraction(counts), self.cost.ms(counts)
        return counts

    def summary(self) -> dict[str, Any]:
        """What the budget did, for ``report.json``: the setting timed, the prediction, the measured steps, seconds.

        ``seconds``: ``table`` (building or reading the table), ``plan`` (every plan, the
        feedback included) and ``feedback`` (timing the planned models, part of ``plan``).
        """
        setting = None
        if self.cost is not None:
            setting = {k: v for k, v in asdict(self.cost.models[0].setting).items() if k != "batch_size"}
        return {"target": self.target, "batch_sizes": list(self.batch_sizes), "setting": setting,
                "predicted": self.predicted, "predicted_ms": self.predicted_ms,
                "full_ms": self.cost.ms() if self.cost is not None else {}, "aim": self.aim,
                "feedback": [asdict(s) for s in self.steps],
                "timed": self.cost.timings if self.cost is not None else 0, "seconds": dict(self.seconds)}
