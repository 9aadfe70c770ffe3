"""What a bench plan is made of: its cells (one model each), its result rows, and the plan itself.

:func:`~.plan.plan_bench` builds them; every other module of the bench reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, DataConfig
from .specs import AnchorSpec, MethodSpec


@dataclass(frozen=True)
class Source:
    """A checkpoint a baseline adopts instead of training (:mod:`.sources` reads and checks it)."""

    path: Path  # absolute
    sha256: str  # of the file when the bench was planned: part of the cell key
    model_config: dict[str, Any]  # its build_model arguments (the checkpoint's model_config)
    size: tuple[int, int] | None  # [H, W] pixels it was trained at, when the file records it (reid-prune training)


@dataclass
class Cell:
    """One model of the bench.

    ``kind``: ``train`` (a baseline: trained, or adopted from a checkpoint when ``source`` is set), ``prune`` (a baseline pruned by a method and fine-tuned),
    ``scratch`` (a pruned cell's architecture trained from scratch), ``anchor`` (a baseline
    pruned by Torch-Pruning and fine-tuned) or ``dense`` (a baseline fine-tuned like the
    pruned cells, with nothing cut). ``seed`` is the seed of the baseline it starts
    from; ``finetune_seed`` the seed of its own training when the bench gives fine-tuning seeds.
    """

    key: str
    kind: str
    cfg: Config
    dataset: str  # the data it was trained or fine-tuned on
    pretrain: str  # the data its starting model was trained on (= dataset for baselines)
    seed: int
    arch: str
    label: str  # the row name: architecture, method, anchor or scratch label
    method: MethodSpec | None = None
    anchor: AnchorSpec | None = None
    budget: str = ""
    target_macs: float | None = None
    finetune_seed: int | None = None
    parent: Cell | None = None
    target_latency: float | None = None
    same_widths: Cell | None = None  # a pruned cell whose per-group widths this one keeps (MethodSpec.widths)
    extra_steps: int = 0  # scratch: optimiser steps trained on top of cfg.train.epochs (the bench's train_steps)
    prune_on: str = ""  # a pruned cell's pruning data when it is not its fine-tuning data (cross_domain prune_data)
    prune_data: DataConfig | None = None  # that data's section, passed to the prune job
    source: Source | None = None  # a baseline adopted from a checkpoint, not trained (kind train)

    @property
    def pruned_on(self) -> str:
        """The data a pruned or anchor cell's pruning read ("" for the other kinds): results.csv's prune_data."""
        return self.prune_on or (self.dataset if self.kind in ("prune", "anchor") else "")

    @property
    def target(self) -> str:
        """What the cell keeps, in words."""
        if self.target_latency is not None:
            return f"{self.target_latency:.3g} of its measured latency"
        return f"{self.target_macs:.3g} of its MACs"

    def describe(self) -> str:
        seeds = f"seed {self.seed}" + (f", fine-tuning seed {self.finetune_seed}" if self.finetune_seed is not None
                                       else "")
        if self.kind == "train" and self.source is not None:
            return f"adopt the {self.arch} checkpoint {self.source.path} (not trained here), score it on {self.dataset}"
        if self.kind == "train":
            return f"train {self.arch} on {self.dataset} ({seeds})"
        steps = self.cfg.prune.train_steps
        source = f"{self.pretrain}-trained " if self.pretrain != self.dataset else ""
        if self.kind == "dense":
            length = f"{steps} steps" if steps else f"{self.cfg.prune.finetune_epochs} epochs"
            return f"fine-tune {source}{self.arch} unpruned on {self.dataset}, {length} ({seeds})"
        if self.kind == "scratch":
            epochs = self.cfg.train.epochs
            more = f" + {self.extra_steps} steps" if self.extra_steps else ""
            return (f"train {self.arch} at {self.parent.label}'s widths ({self.target}) from "
                    f"scratch on {self.dataset}, {epochs} epoch{'s' * (epochs != 1)}{more} ({seeds})")
        on = f" on {self.prune_on}'s data" if self.prune_on else ""
        if self.same_widths is not None:
            return (f"prune {source}{self.arch} with {self.method.name}{on} at {self.same_widths.label}'s widths "
                    f"({self.target}), fine-tune on {self.dataset} ({seeds})")
        return (f"prune {source}{self.arch} with {self.label}{on} to {self.target}, "
                f"fine-tune on {self.dataset} ({seeds})")


@dataclass
class RowSpec:
    """One line of the results: a cell evaluated on ``dataset``."""

    scenario: str  # in_domain | cross_domain
    name: str
    cell: Cell
    dataset: str


@dataclass
class Plan:
    cells: list[Cell]
    rows: list[RowSpec]
    budgets: dict[str, float]  # budget label -> fraction of prune_arch's MACs (latency:F: of its latency) kept
    notes: list[str]  # what the bench file asks for but this machine cannot run (e.g. a missing extra)
