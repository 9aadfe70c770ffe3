"""The bench file: typed sections checked like run configs, ``--set`` overrides, and the rules between keys.

A bench file is read into :class:`Bench` by :func:`reid_prune.config_fields.merge` and
checked by :func:`~reid_prune.config_fields.check_fields`, the mechanism of run configs:
each key's type, choices and range are declared beside its default below, and errors
name the key (``bench key methods[0].name: ...``). Keys that hold run-config values
(``base``, ``datasets.NAME``, the ``set`` of baselines and methods) are checked by merging
them into a :class:`~reid_prune.config.Config` (``config key base.train.lr: ...``).
:func:`resolve` then checks what ties keys together and fills the defaults that depend on
other keys (labels, epochs, ``compare``). See docs/bench.md for every key.

This module parses and checks only; :mod:`.configs` builds each cell's run config from a
resolved bench, and :mod:`.plan` its cells and keys.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..backbone import ARCHS
from ..config import Config, ConfigError, DataConfig, parse_override, read_yaml
from ..config_fields import check_fields, choice, merge, number_range
from ..pruners import available, get_method
from .sources import display, resolve_baseline
from .specs import (ANCHORS, AnchorSpec, BaselineSpec, BudgetSpec, CrossDomainSpec, MethodSpec, ScratchSpec,
                    deep_update)

NOUN = "bench key"


def fail(key: str, message: str) -> None:
    """Raise the bench's error for ``key``."""
    raise ConfigError(f"{NOUN} {key}: {message}")



@dataclass
class Bench:
    """A bench file (docs/bench.md); after :func:`resolve` every default is filled in."""

    name: str = ""  # default: the file name
    output: str = ""  # default: runs/bench/NAME
    input_size: list[int] | None = number_range(None, 1)  # [H, W] of every cell
    base_config: str = ""  # a run config read under base (path relative to the bench file)
    base: dict[str, Any] = field(default_factory=dict)  # run-config keys shared by every cell
    datasets: dict[str, Any] = field(default_factory=dict)  # name -> data keys over base.data
    compare: list[str] | None = None  # datasets of the in-domain tables (default: all)
    baselines: list[BaselineSpec] = field(default_factory=lambda: [BaselineSpec(arch) for arch in ARCHS])
    epochs: int | None = number_range(None, 1)  # default: base.train.epochs
    lr_steps: list[float] | None = number_range(None, 0, 1, low_open=True, high_open=True)
    prune_arch: str = choice("resnet50", *ARCHS)
    methods: list[MethodSpec] = field(default_factory=list)
    budgets: list[BudgetSpec] = field(default_factory=lambda: [BudgetSpec()])
    finetune_epochs: int = number_range(0, 0)
    # Optimiser steps after the source for every pruned, anchor and dense cell, the method's own training counted
    # (prune.train_steps); the scratch control trains them on top of the source's epochs. Instead of finetune_epochs.
    train_steps: int | None = number_range(None, 1)
    seeds: list[int] = number_range([0], 0)  # seeds of the trained baselines
    finetune_seeds: list[int] | None = number_range(None, 0)  # default: a pruned cell uses its baseline's seed
    cross_domain: list[CrossDomainSpec] = field(default_factory=list)
    scratch: ScratchSpec | None = None
    dense: bool = False  # the unpruned prune_arch baseline fine-tuned as the pruned cells are: their reference
    anchors: list[AnchorSpec] = field(default_factory=list)
    latency_threads: int = number_range(1, 0)  # CPU threads while timing; 0 = torch's default

    def baseline(self, arch: str) -> BaselineSpec:
        """The baseline of architecture ``arch`` (StopIteration when the bench trains none)."""
        return next(b for b in self.baselines if b.arch == arch)

    def method(self, label: str) -> MethodSpec:
        """The method labelled ``label`` (StopIteration when there is none)."""
        return next(m for m in self.methods if m.label == label)


def base_defaults(bench: Bench) -> Config:
    """The run config of ``bench.base`` alone, over the defaults: types checked; ranges are checked per cell
    (:func:`~.configs.run_config`), where the other keys are in.

    Raises:
        ConfigError: a key or type the run config refuses (``config key base.train.lr: ...``).
    """
    cfg = Config()
    merge(cfg, bench.base, "base.")
    return cfg


def _closest(value: Any, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    return f"; did you mean {close[0]}?" if close else f"; valid: {', '.join(valid)}"


def _unique(values: Sequence[Any], key: str, what: str) -> None:
    repeated = sorted(str(v) for v, n in Counter(values).items() if n > 1)
    if repeated:
        fail(key, f"{what} must differ; repeated: {', '.join(repeated)} (in {list(values)})")


def _check_labels(labels: Sequence[str]) -> None:
    """Labels name cell folders, where every run of other characters becomes '-': they must differ there too."""
    folders: dict[str, str] = {}
    for label in labels:
        folder = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)
        if not re.search(r"[A-Za-z0-9]", label):
            fail("methods", f"label {label!r} needs a letter or digit: it names the rows and the cell folders")
        if folder in folders:
            fail("methods", f"labels {folders[folder]!r} and {label!r} name the same cell folders ({folder}); "
                            "make them differ in a letter, digit, '_', '.' or '-'")
        folders[folder] = label


def resolve(bench: Bench, name: str, folder: Path) -> Bench:
    """Check the rules between keys and fill the defaults that depend on other keys; returns ``bench``.

    A baseline's ``checkpoint`` is read here (``folder``: the bench file's, for a relative path) and checked
    (:func:`~.sources.resolve_baseline`); its ``arch`` is the file's.
    """
    if bench.base_config:
        values = read_yaml(folder / bench.base_config, f"{NOUN} base_config: run config")
        if not isinstance(values, dict):
            fail("base_config", f"{bench.base_config} holds no mapping of run-config keys")
        bench.base = deep_update(values, bench.base)
        bench.base_config = ""  # read into base: the written bench.yaml needs no other file
    defaults = base_defaults(bench)
    if bench.input_size is not None and len(bench.input_size) != 2:
        fail("input_size", f"expected [height, width] in pixels, e.g. [256, 128], got {bench.input_size!r}")

    if not bench.datasets:
        fail("datasets", "name at least one dataset, e.g. {market1501: {dataset: market1501, root: data/Market-1501}}")
    for ds_name, values in bench.datasets.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(ds_name)):
            fail(f"datasets.{ds_name}", "dataset names may hold only letters, digits, '_', '.' and '-'")
        bench.datasets[ds_name] = values or {}
        merge(DataConfig(), bench.datasets[ds_name], f"datasets.{ds_name}.")
    bench.compare = list(bench.datasets) if bench.compare is None else bench.compare
    for i, ds_name in enumerate(bench.compare):
        if ds_name not in bench.datasets:
            fail(f"compare[{i}]", f"{ds_name!r} is not in datasets ({', '.join(bench.datasets)})")

    for i, baseline in enumerate(bench.baselines):
        if baseline.checkpoint:
            resolve_baseline(baseline, i, folder)  # read and checked now: arch from the file, epochs refused
        else:
            baseline.arch = baseline.arch or "resnet50"
            baseline.epochs = baseline.epochs or bench.epochs or defaults.train.epochs
            baseline.label = baseline.label or display(baseline.arch)
        merge(copy.deepcopy(defaults), baseline.overrides, f"baselines[{i}].set.")
    archs = [b.arch for b in bench.baselines]
    repeated = sorted({b.arch for b in bench.baselines if b.checkpoint and archs.count(b.arch) > 1})
    if repeated:  # prune_arch, match:ARCH budgets and the cells name a source model by its architecture
        fail("baselines", f"more than one baseline is a {' and a '.join(repeated)}, one of them a checkpoint; a bench "
                          "identifies each source model by its architecture (prune_arch, match:ARCH budgets): keep "
                          "one baseline per architecture and compare the other checkpoint in a second bench")
    _unique(archs, "baselines", "the architectures")
    if bench.prune_arch not in archs:
        files = "".join(f" ({b.arch}: the checkpoint {b.checkpoint})" for b in bench.baselines if b.checkpoint)
        fail("prune_arch", f"{bench.prune_arch} must also be a baseline (the pruned model is that baseline); "
                           f"baselines are {', '.join(archs)}{files}: set prune_arch to one of them")
    _check_source(bench)
    if bench.lr_steps is not None and bench.lr_steps != sorted(set(bench.lr_steps)):
        fail("lr_steps", f"expected increasing fractions of the epochs in (0, 1), e.g. [0.6, 0.85], got {bench.lr_steps}")

    for i, method in enumerate(bench.methods):
        if method.name not in available():
            fail(f"methods[{i}].name", f"unknown pruning method {method.name!r}" + _closest(method.name, available()))
        own = get_method(method.name).label
        method.label = method.label or (f"{own} ({method.widths} widths)" if method.widths else own)
        merge(copy.deepcopy(defaults), method.overrides, f"methods[{i}].set.")
    for i, method in enumerate(bench.methods):
        own = {k for k in ("train_steps", "finetune_epochs") if k in method.overrides.get("prune", {})}
        if bench.train_steps is not None and own:
            fail(f"methods[{i}].set", f"sets prune.{own.pop()}, but train_steps gives every cell the same "
                                      "training: remove it from the method's set")
    if bench.train_steps is not None and bench.finetune_epochs:
        fail("train_steps", f"counts the fine-tuning too: give train_steps or finetune_epochs "
                            f"({bench.finetune_epochs}), not both")
    _resolve_budgets(bench)
    if not bench.seeds:
        fail("seeds", "give at least one seed of the trained baselines, e.g. [0]")
    _unique(bench.seeds, "seeds", "seeds")
    if bench.finetune_seeds == []:
        fail("finetune_seeds", "give at least one fine-tuning seed, or leave the key out to fine-tune each pruned "
                               "model with its baseline's seed")
    _unique(bench.finetune_seeds or [], "finetune_seeds", "seeds")

    labels = [m.label for m in bench.methods]
    if bench.scratch is not None:
        if bench.scratch.widths not in labels:
            fail("scratch.widths", f"{bench.scratch.widths!r} is not the label of a method in methods"
                                   + _closest(bench.scratch.widths, labels))
        bench.scratch.label = bench.scratch.label or f"Scratch ({bench.scratch.widths} widths)"
    for anchor in bench.anchors:
        anchor.label = anchor.label or ANCHORS[anchor.importance]
    _resolve_widths(bench.methods, [a.label for a in bench.anchors])
    budget_labels = [b.label for b in bench.budgets]
    for i, label in enumerate(bench.scratch.budgets or [] if bench.scratch else []):
        if BudgetSpec(label).label not in budget_labels:
            fail(f"scratch.budgets[{i}]", f"{label!r} is not a budget of budgets ({', '.join(budget_labels)})")
    every = labels + [a.label for a in bench.anchors] + ([bench.scratch.label] if bench.scratch else [])
    _unique(every, "methods", "labels of methods, anchors and scratch (give the same method twice with a label each)")
    _unique([b.label for b in bench.baselines] + every, "baselines", "labels of baselines and methods (rows)")
    _check_labels(every)
    if every and not bench.budgets:
        fail("budgets", "give at least one budget for the methods, anchors and scratch, e.g. [0.5]; a bench of "
                        "baselines alone sets methods: [], anchors: [] and scratch: null")
    for i, scenario in enumerate(bench.cross_domain):
        for side in ("source", "target"):
            if getattr(scenario, side) not in bench.datasets:
                fail(f"cross_domain[{i}].{side}",
                     f"{getattr(scenario, side)!r} is not in datasets ({', '.join(bench.datasets)})")
        if scenario.source == scenario.target:
            fail(f"cross_domain[{i}]", "source and target must be different datasets")
        scenario.methods = labels if scenario.methods is None else scenario.methods
        for j, label in enumerate(scenario.methods):
            if label not in labels:
                fail(f"cross_domain[{i}].methods[{j}]",
                     f"{label!r} is not the label of a method in methods ({', '.join(labels)})")
        if scenario.prune_data == []:
            fail(f"cross_domain[{i}].prune_data", "give source, target or both ([source, target]: the 2 x 2), or "
                                                  "leave the key out to prune each cell with its fine-tuning data")
        for j, side in enumerate(scenario.prune_data or []):
            if side not in ("source", "target"):
                fail(f"cross_domain[{i}].prune_data[{j}]", f"expected source or target (the scenario's sides, "
                                                           f"here {scenario.source} and {scenario.target}), got "
                                                           f"{side!r}" + _closest(side, ("source", "target")))
        _unique(scenario.prune_data or [], f"cross_domain[{i}].prune_data", "sides")
    if not bench.compare and not bench.cross_domain:
        fail("compare", "nothing to run: compare lists no dataset and there is no cross_domain scenario")

    bench.name = bench.name or name
    bench.output = bench.output or f"runs/bench/{bench.name}"
    return bench


def _check_source(bench: Bench) -> None:
    """What a ``prune_arch`` adopted from a checkpoint rules out: it is one source model, not trained here."""
    source = bench.baseline(bench.prune_arch)
    if not source.checkpoint:
        return
    if bench.scratch is not None:
        fail("scratch", f"the control trains {bench.prune_arch} with its source's recipe for as long as the source "
                        f"trained, but the source is the checkpoint {source.checkpoint}, not trained here: remove "
                        f"scratch (scratch: null), or train the source in the bench (baselines: [{source.arch}])")
    tuned = bench.finetune_seeds is not None or any(b.finetune_seeds is not None for b in bench.budgets)
    if len(bench.seeds) > 1 and tuned:
        fail("seeds", f"the {bench.prune_arch} source is one checkpoint ({source.checkpoint}), so seeds "
                      f"{bench.seeds} are already the fine-tuning seeds of the cells pruned from it, and "
                      "finetune_seeds would repeat each of them: give seeds or finetune_seeds, not both")


def _resolve_widths(methods: Sequence[MethodSpec], anchors: Sequence[str]) -> None:
    """A method's ``widths`` names another method of the list that plans its own widths, or an anchor."""
    planners = [m.label for m in methods if not m.widths] + list(anchors)
    for i, method in enumerate(methods):
        if method.widths and method.widths not in planners:
            fail(f"methods[{i}].widths", f"{method.widths!r} is not the label of a method that plans its own widths "
                                         "(one without widths) or of an anchor" + _closest(method.widths, planners))


def _resolve_budgets(bench: Bench) -> None:
    for i, budget in enumerate(bench.budgets):
        if isinstance(budget.value, str) and budget.value.startswith("match:"):
            if budget.value.removeprefix("match:") not in ARCHS:
                fail(f"budgets[{i}]", f"expected one of {', '.join(ARCHS)} after match:, got {budget.value!r}")
        elif (budget.latency is None if isinstance(budget.value, str) else not 0 < budget.value <= 1):
            fail(f"budgets[{i}]", f"expected a fraction of {bench.prune_arch}'s MACs kept in (0, 1], match:ARCH "
                                  f"(e.g. match:resnet18) or latency:F (a fraction of its measured latency kept, "
                                  f"e.g. latency:0.5), got {budget.value!r}")
        if budget.finetune_seeds == []:
            fail(f"budgets[{i}].finetune_seeds", "give at least one fine-tuning seed, or leave the key out to use "
                                                 "the bench's finetune_seeds")
        _unique(budget.finetune_seeds or [], f"budgets[{i}].finetune_seeds", "seeds")
    _unique([b.label for b in bench.budgets], "budgets", "budgets")


def parse_bench(raw: Any, name: str, folder: str | Path = ".") -> Bench:
    """Check a bench mapping and build a resolved :class:`Bench`; errors name the key (``ConfigError``).

    ``folder``: where a relative ``base_config`` is read from (the bench file's folder).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"bench file: expected a mapping of bench keys "
                          f"({', '.join(f.name for f in dataclasses.fields(Bench))}), got {raw!r}")
    bench = Bench()
    merge(bench, raw, noun=NOUN)
    check_fields(bench, noun=NOUN)
    for i, (item, baseline) in enumerate(zip(raw.get("baselines") or [], bench.baselines)):
        # "" is what a written bench.yaml holds for a trained baseline (with its epochs); given alone it would
        # silently train the default architecture instead of adopting a file.
        if isinstance(item, dict) and item.get("checkpoint") == "" and "epochs" not in item:
            fail(f"baselines[{i}].checkpoint", "an empty path; give the checkpoint file (a relative path is read "
                                               "from the bench file's folder), or remove the key to train the baseline")
        if isinstance(item, dict) and "arch" not in item:
            baseline.arch = ""  # not given: a checkpoint's is read from the file, a trained one is resnet50
    return resolve(bench, name, Path(folder))


_INDEXED = re.compile(r"(.+)\[(\d+)\]")


def _shorthands() -> dict[str, str]:
    """{bench key: SHORTHAND field} of the keys that are lists of sections (methods -> name, ...)."""
    out = {}
    for key, tp in typing.get_type_hints(Bench).items():
        args = typing.get_args(tp)
        if typing.get_origin(tp) is list and args and hasattr(args[0], "SHORTHAND"):
            out[key] = args[0].SHORTHAND
    return out


def set_key(raw: dict[str, Any], text: str) -> None:
    """Apply one ``--set key.path=value`` to the file's mapping; ``methods[3].options.rounds=2`` indexes a list.

    A list item in its short form (``haoli``) is expanded (``{name: haoli}``) when a key below it is set.
    """
    keys, value = parse_override(text)
    node: Any = raw
    for depth, key in enumerate(keys):
        if not isinstance(node, dict):
            raise ConfigError(f"--set {text!r}: {'.'.join(keys[:depth])} is not a mapping")
        indexed = _INDEXED.fullmatch(key)
        if indexed:
            name, slot = indexed.group(1), int(indexed.group(2))
            container = node.get(name)
            if not isinstance(container, list) or slot >= len(container):
                size = len(container) if isinstance(container, list) else 0
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[:depth + 1])} does not exist "
                                  f"({name} has {size} items)")
        else:
            container, slot = node, key
        if depth == len(keys) - 1:
            container[slot] = value
            return
        if not indexed:
            container.setdefault(slot, {})
        elif depth == 0 and not isinstance(container[slot], dict) and name in _shorthands():
            container[slot] = {_shorthands()[name]: container[slot]}
        node = container[slot]


def load_bench(path: str | Path, overrides: Sequence[str] = ()) -> Bench:
    """Read a bench YAML file, apply ``key.path=value`` overrides (e.g. ``seeds=[0,1]``) and check it."""
    path = Path(path)
    raw = read_yaml(path, "bench file")
    if not isinstance(raw, dict):
        raise ConfigError(f"bench file {str(path)!r}: expected a mapping of bench keys "
                          f"({', '.join(f.name for f in dataclasses.fields(Bench))})")
    for text in overrides:
        set_key(raw, text)
    return parse_bench(raw, path.stem, path.parent)
