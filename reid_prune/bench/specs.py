"""The sections of a bench file that describe one thing each: a baseline, a method, a budget, a cross-domain
scenario, the scratch control, a Torch-Pruning anchor; and the dotted-key helpers their ``set`` uses.

:mod:`.schema` reads them into a :class:`~.schema.Bench` and checks the rules between them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..backbone import ARCHS
from ..config import nest
from ..config_fields import choice, number_range

ANCHORS = {"l1": "Torch-Pruning L1", "taylor": "Torch-Pruning Taylor"}


def dotted(values: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}`` (nested mappings are kept as they are)."""
    nested: dict[str, Any] = {}
    for path, item in values.items():
        deep_update(nested, nest(str(path).split("."), item))
    return nested


def deep_update(target: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Merge nested ``values`` into ``target`` in place (mappings key by key); returns ``target``."""
    for name, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            deep_update(target[name], value)
        else:
            target[name] = copy.deepcopy(value)
    return target


@dataclass
class BaselineSpec:
    """An architecture trained from the base config; ``set``: dotted config keys for it alone (and its cells).

    With ``checkpoint`` (a reid-prune checkpoint: a ``best.pt``, or a model written by ``reid-prune
    import``; relative to the bench file), it is not trained: that model is adopted as the source and
    scored; ``arch`` is read from the file, and ``epochs`` has no meaning (:mod:`.sources`).
    """

    SHORTHAND: ClassVar[str] = "arch"
    arch: str = choice("resnet50", *ARCHS)
    epochs: int | None = number_range(None, 1)  # default: the bench's epochs (None for a checkpoint)
    set: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""  # a model to adopt instead of training one (resolved to an absolute path)
    label: str = ""  # the row name; default: ResNet50, or "ResNet50 (FILE)" for a checkpoint

    @property
    def overrides(self) -> dict[str, Any]:
        return dotted(self.set)


@dataclass
class MethodSpec:
    """A registered pruning method with its display label, options and dotted config keys (``set``); ``widths``:
    another method's label, whose per-group widths (same dataset, budget and seeds) this one keeps instead of
    planning its own (``{name: random, widths: HaoLi}`` separates HaoLi's criterion from its allocation)."""

    SHORTHAND: ClassVar[str] = "name"
    name: str = ""
    label: str = ""  # default: the method's own label, or "LABEL (WIDTHS widths)"
    options: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)
    widths: str = ""

    @property
    def overrides(self) -> dict[str, Any]:
        return deep_update(dotted(self.set), {"prune": {"options": self.options}})


@dataclass
class BudgetSpec:
    """A fraction of ``prune_arch``'s MACs kept (or ``match:ARCH``, or ``latency:F``: a fraction of its latency
    measured on this machine kept), with its own fine-tuning seeds if given."""

    SHORTHAND: ClassVar[str] = "value"
    value: float | str = "match:resnet18"
    finetune_seeds: list[int] | None = number_range(None, 0)  # default: the bench's finetune_seeds

    @property
    def label(self) -> str:
        return self.value if isinstance(self.value, str) else f"{self.value:g}"

    @property
    def latency(self) -> float | None:
        """The F of a ``latency:F`` budget when it is a fraction in (0, 1], else None."""
        if not isinstance(self.value, str) or not self.value.startswith("latency:"):
            return None
        try:
            value = float(self.value.removeprefix("latency:"))
        except ValueError:
            return None
        return value if 0 < value <= 1 else None


@dataclass
class CrossDomainSpec:
    """Train on ``source``; prune and fine-tune with source or target data; evaluate on ``target``.

    ``prune_data`` (``source``, ``target`` or both): the data the methods whose pruning reads data prune
    with, each with either fine-tuning data (``[source, target]``: the 2 x 2), beside the dense source
    fine-tuned on the target. Default: each cell prunes with its fine-tuning data (two cells per method).
    """

    source: str = ""
    target: str = ""
    methods: list[str] | None = None  # labels of the methods run here (default: all)
    prune_data: list[str] | None = None  # source and/or target (default: the fine-tuning data)


@dataclass
class ScratchSpec:
    """The control of Liu et al. (ICLR 2019): a pruned architecture trained from scratch.

    The widths are those one method's cell reached (same dataset, budget and seeds); the
    schedule is the baseline's stretched by ``finetune_epochs`` (or ``train_steps``), so it
    trains as long as the source model and its fine-tuning together.
    """

    SHORTHAND: ClassVar[str] = "widths"
    widths: str = ""  # label of the method whose widths are trained
    label: str = ""  # default: "Scratch (LABEL widths)"
    budgets: list[float | str] | None = None  # labels of the budgets it runs at (default: all), e.g. [0.3]


@dataclass
class AnchorSpec:
    """A Torch-Pruning pruner (the ``bench`` extra) at the same budgets, through the same fine-tuning."""

    SHORTHAND: ClassVar[str] = "importance"
    importance: str = choice("l1", *ANCHORS)
    last_stage: bool = True  # cut the last stage too (Torch-Pruning's default); false leaves all of it whole
    label: str = ""  # default: "Torch-Pruning L1" / "Torch-Pruning Taylor"
