"""Latency cost model: the predicted latency of a network under any per-group keep counts, on this device.

MACs leave out thin convolutions, BatchNorm, activations and residual adds, and a conv's
speed depends on its shape, not only on its multiply-accumulates. A latency budget therefore
needs the time the network takes where it runs. As in NetAdapt (Yang et al., ECCV 2018) and
HALP (Shen et al., NeurIPS 2022), it is predicted from a lookup table measured on the device:

1. every conv and linear the retrieval forward runs is taken from the layer list of
   :class:`~.cost.CostModel` (its widths, the channel groups that set them, its input shape);
2. each layer is timed as a standalone op (:meth:`~.latency_table.Signature.op`) on a grid of (in, out) widths: the fractions
   :data:`GRID` of each width plus its smallest allowed width, rounded to ``round_to``
   (:func:`axis`). Layers with the same signature and widths share their measurements
   (a ResNet-50 at 256x128 has 53 convs but 22 distinct shapes), and every measurement is
   cached on disk (:class:`~.latency_table.LatencyTable`);
3. a layer's time at any widths is the bilinear interpolation of its grid, after the grid
   is made monotone (fewer channels never cost more: a timing's noise must not invert the
   ranking a solver bisects on); the network's time is the sum over its layers plus a
   constant, chosen so that the full network's prediction equals one measurement of the
   whole network (:class:`LatencyModel`). The constant stands for what standalone convs
   leave out (BatchNorm, activations, pooling, residual adds, the head, per-op dispatch).
   Measured against the real ratios of randomly pruned ResNet-18/50s, this constant
   predicted better than a scale factor, and timing each conv with its BatchNorm and ReLU
   did not help (docs/pruners.md, "Latency budgets").
4. the cache is not trusted: every run times the whole network again and compares it with the
   stored calibration; beyond :data:`CALIBRATION_TOLERANCE` (a calibration timed under another
   load, or a copied or edited file) the model's ops and its calibration are timed again, alike,
   and a stored op slower than :data:`OP_LIMIT` whole networks is timed again (both warn).

:class:`LatencyCost` combines several batch sizes: the kept fraction of latency is the
mean of the kept fractions at each batch size. Prediction has an error; the pruner
corrects it by measuring the planned widths (:mod:`.latency_feedback`).
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from ..distributed import broadcast_object, is_main_process
from ..evaluation.complexity import measure_latency
from ..layers import NORM, PRODUCER, role_widths
from ..precision import ComputeSettings, cpu_threads
from .budget import _bounds, _round_keep
from .cost import CostModel, LayerCost
from .latency_table import LatencySetting, LatencyTable, Signature, cache_folder

# Fractions of a layer's width at which it is timed (plus its smallest allowed width). The time of a
# conv is close to bilinear in (in, out) away from the smallest widths, so a coarse grid is enough.
GRID = (0.125, 0.25, 0.5, 0.75, 1.0)
# Passes of the whole network for the calibration: its median is the measured latency. The check of a stored
# calibration, made on every run, takes fewer: it only has to tell a stale value (x2-3) from noise.
NETWORK_REPEATS, CHECK_REPEATS = 5, 3
# A stored calibration is re-timed (with the model's ops) when the network timed now differs from it by more than
# this factor minus one: 25% is past the run-to-run spread of a median of 5 passes on a busy machine (a few
# hundredths), and well below the 2-3x of a calibration timed under load.
CALIBRATION_TOLERANCE = 0.25
# One conv or linear alone cannot take several times as long as the whole network it is part of: a stored op
# above this many networks (timed now) is no timing of this machine, and is timed again.
OP_LIMIT = 4.0


def axis(channels: int, controlled: bool, *, min_channels: int = 1, round_to: int = 1) -> list[int]:
    """The widths a layer dimension of ``channels`` is timed at: one point when no group sets it.

    floor(fraction x channels) for the :data:`GRID` fractions, rounded as keep counts are
    (:func:`~.budget._round_keep`: widths a plan can have), plus the smallest allowed width
    and ``channels`` itself; ascending and unique.
    """
    if not controlled:
        return [channels]
    points = {_bounds(channels, min_channels, round_to), channels}
    points.update(_round_keep(int(fraction * channels), channels, min_channels, round_to) for fraction in GRID)
    return sorted(points)


def _segment(points: Sequence[int], x: int) -> tuple[int, float]:
    """(i, t): ``x`` lies at ``points[i] + t (points[i+1] - points[i])``; t outside [0, 1] extrapolates."""
    if len(points) == 1:
        return 0, 0.0
    i = min(max(bisect.bisect_right(points, x) - 1, 0), len(points) - 2)
    return i, (x - points[i]) / (points[i + 1] - points[i])


def monotone(grid: list[list[float]]) -> list[list[float]]:
    """The smallest grid >= ``grid`` that never decreases along either axis (a running maximum)."""
    out = [list(row) for row in grid]
    for i, row in enumerate(out):
        for j in range(len(row)):
            row[j] = max(row[j], row[j - 1] if j else 0.0, out[i - 1][j] if i else 0.0)
    return out


@dataclass
class LayerLatency:
    """One timed layer: its signature, the groups that set its widths and its grid of measured times.

    ``grid[i][j]`` is milliseconds per image at ``in_axis[i]`` input and ``out_axis[j]`` output channels.
    """

    layer: LayerCost
    signature: Signature
    in_axis: list[int]
    out_axis: list[int]
    grid: list[list[float]] | None = None

    def ms(self, in_channels: int, out_channels: int) -> float:
        """Bilinear interpolation of the grid at these widths."""
        i, s = _segment(self.in_axis, in_channels)
        j, t = _segment(self.out_axis, out_channels)
        g = self.grid
        total = 0.0
        for di, wi in ((0, 1 - s), (1, s)):
            for dj, wj in ((0, 1 - t), (1, t)):
                if wi and wj:
                    total += wi * wj * g[i + di][j + dj]
        return total


class LatencyModel:
    """Predicted milliseconds per image of a network at one batch size, for any per-group keep counts.

    Args:
        model: the network at the widths the predictions refer to (not changed; a copy is timed).
        setting: device, precision, memory format, threads, batch size and input size.
        cost: the network's :class:`~.cost.CostModel` at ``setting.input_size`` (built when None).
        min_channels, round_to: the smallest width and granularity the plans will have.
        cache: keep the measurements in :func:`~.latency_table.cache_folder` (False: in memory only).

    Building it only records the layers; :meth:`measure` times what the cache lacks (on the
    main process only under torchrun, the others receive its numbers).
    """

    def __init__(self, model: nn.Module, setting: LatencySetting, *, cost: CostModel | None = None,
                 min_channels: int = 1, round_to: int = 1, cache: bool = True) -> None:
        self.model, self.setting = model, setting
        self.cost = cost if cost is not None else CostModel(model, setting.input_size)
        self.folder = cache_folder() if cache else None
        self.layers: list[LayerLatency] = []
        for layer in self.cost.layers:
            if layer.is_norm or not layer.per_pair:
                continue  # norms are in the calibration constant; layers the forward does not run cost nothing
            module = model.get_submodule(layer.name)
            signature = Signature.of(module, layer.in_shape)
            if signature.groups != 1 and (layer.out_group or layer.in_group):
                raise ValueError(f"latency budgets do not support grouped convs whose widths change ({layer.name})")
            self.layers.append(LayerLatency(
                layer, signature,
                axis(layer.in_channels, layer.in_group is not None, min_channels=min_channels, round_to=round_to),
                axis(layer.out_channels, layer.out_group is not None, min_channels=min_channels, round_to=round_to)))
        self.measured_ms: float | None = None  # the whole network, measured
        self.offset, self.scale = 0.0, 1.0
        self.timings = 0  # ops and networks timed by measure(); 0 when all came from the cache

    def network_key(self) -> str:
        """A hash of the network's description (its modules and widths) and input shape, for the table."""
        text = json.dumps([repr(self.model), [(l.layer.name, l.layer.in_shape) for l in self.layers]])
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def measure(self) -> LatencyModel:
        """Fill every layer's grid and the calibration from the table, timing what it lacks; returns self.

        The whole network is timed on every call: it is the calibration when the table has
        none, and otherwise the check of the stored one (:meth:`check_table`).
        """

        def run() -> tuple[list[list[list[float]]], float, int]:
            table = LatencyTable(self.setting, self.folder)
            key = self.network_key()
            cached = table.networks.get(key)
            with cpu_threads(self.setting.threads):
                now = self.time_network(NETWORK_REPEATS if cached is None else CHECK_REPEATS)
                stale = self.check_table(table, key, now)
                grids = [[[table.op_ms(l.signature, c_in, c_out) for c_out in l.out_axis] for c_in in l.in_axis]
                         for l in self.layers]
                if cached is None or stale:  # a stale calibration is timed again after its ops, as they were
                    table.networks[key] = now if cached is None else self.time_network(NETWORK_REPEATS)
                    table.measured += 1
            if table.measured or table.dirty:
                table.save()
            return grids, table.networks[key], table.measured

        grids, self.measured_ms, self.timings = broadcast_object(run() if is_main_process() else None)
        for layer, grid in zip(self.layers, grids):
            layer.grid = monotone(grid)
        self.calibrate(self.measured_ms)
        return self

    def time_network(self, repeats: int) -> float:
        """The whole network's milliseconds per image in the setting: the median of ``repeats`` passes."""
        compute, batch = self.setting.compute, self.setting.batch_size
        return measure_latency(self.model, self.setting.input_size, batch_sizes=(batch,), device=compute.device,
                               warmup=1, repeats=repeats, channels_last=compute.channels_last,
                               precision=compute.precision)[f"batch{batch}"]

    def check_table(self, table: LatencyTable, key: str, now_ms: float) -> bool:
        """Check the table's entries for this network (``key``) against ``now_ms``, its whole latency timed now.

        A stored calibration more than :data:`CALIBRATION_TOLERANCE` away (as a ratio) was timed
        under other conditions than this run (another load, or a copied or edited file), and so
        probably were the ops timed with it: the model's ops are dropped to be timed again, and
        True is returned (the calibration is stale). Stored ops above :data:`OP_LIMIT` x ``now_ms``
        are dropped too. Each case warns once.
        """
        ops = {l.signature.key(c_in, c_out) for l in self.layers for c_in in l.in_axis for c_out in l.out_axis}
        where = f"latency table '{table.path}' (batch {self.setting.batch_size})"
        cached = table.networks.get(key)
        limit = 1 + CALIBRATION_TOLERANCE
        stale = cached is not None and not 1 / limit <= cached / now_ms <= limit
        if stale:
            warnings.warn(f"{where}: the whole network takes {now_ms:.4g} ms per image now, {cached:.4g} in the table "
                          f"(x{cached / now_ms:.2f}; tolerance x{limit:g}): timed under other "
                          f"conditions, so its {len(ops)} ops and the calibration are timed again", UserWarning,
                          stacklevel=2)
            table.forget(ops)
        slow = sorted(k for k in ops if table.ops.get(k, 0.0) > OP_LIMIT * now_ms)
        if slow:
            warnings.warn(f"{where}: {len(slow)} stored op(s) take more than {OP_LIMIT:g} x the whole network "
                          f"({now_ms:.4g} ms per image now; e.g. {slow[0]!r}: {table.ops[slow[0]]:.4g} ms), which "
                          "no op of it can: timing them again", UserWarning, stacklevel=2)
            table.forget(slow)
        return stale

    def calibrate(self, measured_ms: float) -> None:
        """Map the layers' sum onto the measured network: add what the layers leave out.

        When the network runs faster than its layers timed alone (possible for large batches,
        whose standalone ops lose cache reuse), a constant would go negative and could make
        small widths free; the sum is then scaled down instead.
        """
        raw = self.raw_ms()
        self.offset, self.scale = (measured_ms - raw, 1.0) if measured_ms >= raw else (0.0, measured_ms / raw)

    def raw_ms(self, keep_counts: Mapping[str, int] | None = None) -> float:
        """The sum of the layers' interpolated times, uncalibrated."""
        counts = self.cost.check(keep_counts)
        total = 0.0
        for timed in self.layers:
            out_c, in_c = self.cost.widths(timed.layer, counts)
            total += timed.ms(in_c, out_c)
        return total

    def ms(self, keep_counts: Mapping[str, int] | None = None) -> float:
        """Predicted milliseconds per image with ``keep_counts`` {group: channels kept} (others: as built)."""
        if self.measured_ms is None:
            raise RuntimeError("LatencyModel.ms before measure(): call measure() first")
        return self.scale * self.raw_ms(keep_counts) + self.offset


class LatencyCost:
    """The kept fraction of latency over several batch sizes: the mean of the per-batch fractions.

    Args:
        model: the network the fractions refer to (its widths are 1.0).
        compute: device, precision and memory format of the deployment.
        batch_sizes: the batch sizes the budget targets (``eval`` reports 1 and 32).
        threads: CPU intra-op threads while timing; 0 = torch's current count.
        input_size: (H, W) of the input image.
        cost: the model's :class:`~.cost.CostModel` at ``input_size`` (built when None).
        min_channels, round_to: as in the allocation.
        cache: keep the measurements in :func:`~.latency_table.cache_folder` (False: in memory only).
    """

    def __init__(self, model: nn.Module, compute: ComputeSettings, *, batch_sizes: Sequence[int] = (1, 32),
                 threads: int = 0, input_size: tuple[int, int] = (256, 128), cost: CostModel | None = None,
                 min_channels: int = 1, round_to: int = 1, cache: bool = True) -> None:
        if not batch_sizes or any(b < 1 for b in batch_sizes):
            raise ValueError(f"latency batch sizes must be >= 1, got {list(batch_sizes)}")
        cost = cost if cost is not None else CostModel(model, input_size)
        # The model is timed as it is deployed: in eval mode, on the device, in the memory format.
        runner = compute.place(copy.deepcopy(model)).eval()
        self.models = [LatencyModel(runner, LatencySetting.current(compute, batch_size=b, input_size=input_size,
                                                                   threads=threads),
                                    cost=cost, min_channels=min_channels, round_to=round_to, cache=cache).measure()
                       for b in dict.fromkeys(batch_sizes)]
        self.cost = cost
        self.full = [m.ms() for m in self.models]

    @property
    def timings(self) -> int:
        """How many ops and networks were timed (0 when the cache had everything)."""
        return sum(m.timings for m in self.models)

    def fraction(self, keep_counts: Mapping[str, int] | None = None) -> float:
        """Predicted fraction of the latency kept, averaged over the batch sizes."""
        return sum(m.ms(keep_counts) / full for m, full in zip(self.models, self.full)) / len(self.models)

    def ms(self, keep_counts: Mapping[str, int] | None = None) -> dict[str, float]:
        """Predicted milliseconds per image at each batch size: {``batch{b}``: ms}."""
        return {f"batch{m.setting.batch_size}": m.ms(keep_counts) for m in self.models}


def widths_for(cost: CostModel, keep_counts: Mapping[str, int]) -> dict[str, list[int]]:
    """Per-module widths ({name: [out, in]} or [C] for norms, as ``checkpoint.module_widths``) under ``keep_counts``."""
    counts = cost.check(keep_counts)
    widths = {}
    for layer in cost.layers:
        out_c, in_c = cost.widths(layer, counts)
        widths[layer.name] = list(role_widths(NORM if layer.is_norm else PRODUCER, out_c, in_c))
    return widths

