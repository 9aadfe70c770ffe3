"""Benchmark harness: train the baselines, prune one of them with every method at one budget, compare.

``reid-prune bench --config configs/bench/NAME.yaml [--output DIR]`` runs the survey's
comparison (Table 5) on any Market-layout data:

1. trains the baseline architectures (e.g. ResNet18, 34 and 50) with :func:`reid_prune.engine.train`;
2. prunes the ``prune_arch`` baseline (ResNet-50) with every listed method at each budget
   (``match:resnet18`` = keep ResNet-18's share of ResNet-50's MACs), fine-tunes and
   evaluates it with :func:`reid_prune.engine.prune_run.prune_checkpoint`;
3. optionally runs the cross-domain scenario: a model trained on dataset A is pruned and
   fine-tuned with A's data or with B's, and both are evaluated on B;
4. measures the CPU latency of every model, and writes ``results.csv``, ``results.json``,
   ``results.md`` (Table 5 shape, mean ± std over seeds) and ``pareto.png`` (mAP against MACs;
   needs matplotlib, the ``plot`` extra).

Every trained or pruned model is a *cell*, kept in ``DIR/cells/KEY/``. A cell is finished when
its ``result.json`` exists (written last, atomically); a rerun skips finished cells, continues
an interrupted training from its ``last.pt`` and redoes an interrupted pruning. The key holds
a hash of everything that determines the cell (its resolved config and its parent), so
changing the recipe gives new cells instead of reusing stale ones.

The bench file (see docs/bench.md)::

    name: cuhk03_cpu                      # default: the file name
    output: runs/bench/cuhk03_cpu         # default: runs/bench/NAME; --output wins
    input_size: [128, 64]                 # H, W of every cell (sets data.height/width)
    base: {...}                           # a run config (keys of configs/*.yaml) shared by every cell
    datasets:                             # name -> data config keys, merged over base.data
      cuhk03_market: {dataset: market_layout, root: ../shared/data/cuhk03_market}
    compare: [cuhk03_market]              # datasets of the in-domain table (default: all)
    baselines: [resnet50, resnet34, {arch: resnet18, epochs: 40, set: {train.lr: 0.001}}]
    epochs: 24                            # baseline training epochs (default: base.train.epochs)
    lr_steps: [0.6, 0.85]                 # learning-rate steps as fractions of the epochs
    prune_arch: resnet50
    methods: [haoli, {name: fpgm, label: FPGM soft, options: {mode: soft}, set: {prune.scope: all}}]
    budgets: [match:resnet18, 0.5, latency:0.5]   # fractions of prune_arch's MACs (or measured latency) kept
    finetune_epochs: 6
    seeds: [0, 1, 2]
    cross_domain: [{source: synthetic, target: cuhk03_market, methods: [haoli]}]
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import difflib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import torch
import yaml

from .backbone import build_model
from .checkpoint import apply_widths, load_model, read_checkpoint, save_checkpoint
from .config import Config, ConfigError, DataConfig, _merge, _nest, parse_override, read_yaml, validate
from .distributed import barrier, broadcast_object, env_world_size, is_main_process
from .engine import evaluate_checkpoint, prepare_dataset, train
from .engine.run import model_config_for, parse_dataset
from .engine.prune_run import prune_checkpoint, pruner_from_config
from .engine.trainer import seed_everything
from .evaluation import complexity, measure_latency
from .outputs import check_output_dir
from .precision import ComputeSettings
from .pruners import available, get_method, resolve_scope

ARCHS = ("resnet18", "resnet34", "resnet50")
BENCH_KEYS = ("name", "output", "input_size", "base", "datasets", "compare", "baselines", "epochs", "lr_steps",
              "prune_arch", "methods", "budgets", "finetune_epochs", "seeds", "cross_domain", "latency_threads")
# Settings that change how fast a cell runs, not what it computes: left out of the cell key. The memory
# format changes only the order of the same float32 sums; train.amp (the precision) is part of the key.
UNHASHED = {"output": None, "data": ("workers", "eval_batch_size", "check_images", "cache"),
            "eval": ("latency", "latency_batch_sizes"), "train": ("channels_last",)}
# Config keys added after the first benches ran: left out of the cell key while at their defaults, so cells
# cached before they existed keep their keys.
LATER_KEYS = (("prune", "layer_rates"), ("prune", "allocation"), ("prune", "target_latency"),
              ("prune", "latency_batch_sizes"), ("prune", "latency_threads"), ("prune", "latency_feedback"))
# Version of the pruning methods' rules, in every pruned cell's key: cells cut by older rules are not reused.
PRUNING_RULES = 2
METRICS = ("mAP", "rank1", "rank5", "mINP")
DONE = "result.json"
LATENCY_ROUNDS = 5
PLOT_NOTE = "pareto.png not written: matplotlib is not installed (pip install 'reid-prune[plot]')"


# ---------------------------------------------------------------------------------------------- the bench file


@dataclass
class Baseline:
    """An architecture trained from the base config; ``overrides`` are nested config keys (its ``set``)."""

    arch: str
    epochs: int
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Method:
    """A pruning method: registered ``name``, display ``label`` and nested config ``overrides``."""

    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CrossDomain:
    """Train on ``source``, prune and fine-tune with source or target data, evaluate on ``target``."""

    source: str
    target: str
    methods: list[str]  # labels of the methods run in this scenario


@dataclass
class Bench:
    """A parsed bench file. ``raw`` is the file's mapping after ``--set`` overrides."""

    name: str
    output: str
    input_size: tuple[int, int] | None
    base: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    compare: list[str]
    baselines: list[Baseline]
    lr_steps: list[float] | None
    prune_arch: str
    methods: list[Method]
    budgets: list[str | float]
    finetune_epochs: int
    seeds: list[int]
    cross_domain: list[CrossDomain]
    latency_batch_sizes: list[int]  # base.eval.latency_batch_sizes; empty when base.eval.latency is false
    latency_threads: int  # CPU threads while timing; 0 = torch's default
    raw: dict[str, Any]

    def data_config(self, dataset: str) -> DataConfig:
        """base.data, then the dataset's keys, then input_size."""
        data = DataConfig()
        _merge(data, self.base.get("data", {}), "base.data.")
        _merge(data, self.datasets[dataset], f"datasets.{dataset}.")
        if self.input_size is not None:
            data.height, data.width = self.input_size
        return data

    def run_config(self, dataset: str, baseline: Baseline, seed: int, method: Method | None = None,
                   target_macs: float | None = None, target_latency: float | None = None) -> Config:
        """The resolved run config of one cell: a baseline trained on ``dataset``, or its pruning with ``method``.

        A pruning cell keeps ``target_macs`` of the MACs or ``target_latency`` of the latency measured
        on the machine that prunes it (``prune.latency_batch_sizes``, else the base's latency batch sizes).
        """
        where = f"bench dataset {dataset}, {baseline.arch}, seed {seed}"
        where += f", method {method.label}" if method else ""
        try:
            cfg = Config()
            _merge(cfg, self.base, "base.")
            cfg.data = self.data_config(dataset)
            _merge(cfg, {"model": {"arch": baseline.arch}, "train": {"epochs": baseline.epochs, "seed": seed}})
            _merge(cfg, baseline.overrides)
            if self.lr_steps is not None:
                cfg.train.milestones = [round(f * cfg.train.epochs) for f in self.lr_steps]
            if method is not None:
                _merge(cfg, {"prune": {"method": method.name, "rate": None, "target_params": None,
                                       "target_macs": target_macs, "target_latency": target_latency,
                                       "finetune_epochs": self.finetune_epochs}})
                _merge(cfg, method.overrides)
            cfg.eval.latency = False  # the bench measures CPU latency itself, once per model
            validate(cfg)
            # Explicit in every cell's config and key: a baseline's scope stays internal, as before auto existed.
            p = cfg.prune
            budget = any(v is not None for v in (p.target_macs, p.target_params, p.target_latency))
            p.scope = resolve_scope(p.scope, budget=budget, scopes=get_method(p.method).scopes)
            return cfg
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def baseline(self, arch: str) -> Baseline:
        return next(b for b in self.baselines if b.arch == arch)


def _fail(key: str, message: str) -> NoReturn:
    raise ConfigError(f"bench key {key}: {message}")


def _mapping(value: Any, key: str, allowed: Sequence[str]) -> dict[str, Any]:
    """Check that ``value`` is a mapping whose keys are all in ``allowed``."""
    if not isinstance(value, dict):
        _fail(key, f"expected a mapping, got {value!r}")
    for name in value:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(allowed)}"
            _fail(f"{key}.{name}" if key else str(name), f"not a valid key{hint}")
    return value


def _int(value: Any, key: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(key, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _list(value: Any, key: str) -> list[Any]:
    """A list (a single value counts as a list of one)."""
    if value is None:
        _fail(key, "expected a list, got nothing")
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _dotted(value: Any, key: str) -> dict[str, Any]:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}`` (nested mappings are kept as they are)."""
    if not isinstance(value, dict):
        _fail(key, f"expected a mapping of config keys, e.g. {{train.lr: 0.001}}, got {value!r}")
    nested: dict[str, Any] = {}
    for path, item in value.items():
        _deep_update(nested, _nest(str(path).split("."), item))
    return nested


def _deep_update(target: dict[str, Any], values: dict[str, Any]) -> None:
    for name, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            _deep_update(target[name], value)
        else:
            target[name] = value


def _arch(value: Any, key: str) -> str:
    if value not in ARCHS:
        _fail(key, f"expected one of {', '.join(ARCHS)}, got {value!r}")
    return value


def parse_bench(raw: dict[str, Any], name: str) -> Bench:
    """Check a bench mapping and build a :class:`Bench`; errors name the key (``ConfigError``)."""
    raw = _mapping(raw, "", BENCH_KEYS)
    base = _mapping(raw.get("base", {}), "base", [f.name for f in dataclasses.fields(Config)])
    defaults = Config()  # the base config alone: types checked here, ranges per cell
    _merge(defaults, base, "base.")
    epochs = _int(raw.get("epochs", defaults.train.epochs), "epochs", 1)

    input_size = raw.get("input_size")
    if input_size is not None:
        if not (isinstance(input_size, (list, tuple)) and len(input_size) == 2
                and all(isinstance(v, int) and v > 0 for v in input_size)):
            _fail("input_size", f"expected [height, width] in pixels, e.g. [256, 128], got {input_size!r}")
        input_size = tuple(input_size)

    datasets = raw.get("datasets") or {}
    if not isinstance(datasets, dict) or not datasets:
        _fail("datasets", "name at least one dataset, e.g. {market1501: {dataset: market1501, root: data/Market-1501}}")
    for ds_name, values in datasets.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(ds_name)):
            _fail(f"datasets.{ds_name}", "dataset names may hold only letters, digits, '_', '.' and '-'")
        _merge(DataConfig(), values if values is not None else {}, f"datasets.{ds_name}.")
        datasets[ds_name] = values or {}
    compare = [str(d) for d in _list(raw.get("compare", list(datasets)), "compare")]
    for i, ds_name in enumerate(compare):
        if ds_name not in datasets:
            _fail(f"compare[{i}]", f"{ds_name!r} is not in datasets ({', '.join(datasets)})")

    baselines = []
    for i, entry in enumerate(_list(raw.get("baselines", list(ARCHS)), "baselines")):
        key = f"baselines[{i}]"
        entry = {"arch": entry} if isinstance(entry, str) else _mapping(entry, key, ("arch", "epochs", "set"))
        overrides = _dotted(entry.get("set", {}), f"{key}.set")
        _merge(copy.deepcopy(defaults), overrides, f"{key}.set.")
        baselines.append(Baseline(arch=_arch(entry.get("arch"), f"{key}.arch"),
                                  epochs=_int(entry.get("epochs", epochs), f"{key}.epochs", 1), overrides=overrides))
    archs = [b.arch for b in baselines]
    if len(set(archs)) != len(archs):
        _fail("baselines", f"each architecture may appear once, got {archs}")
    prune_arch = _arch(raw.get("prune_arch", "resnet50"), "prune_arch")
    if prune_arch not in archs:
        _fail("prune_arch", f"{prune_arch} must also be a baseline (the pruned model is that trained baseline); "
                            f"baselines are {', '.join(archs)}")

    lr_steps = raw.get("lr_steps")
    if lr_steps is not None:
        lr_steps = _list(lr_steps, "lr_steps")
        if not all(isinstance(f, (int, float)) and 0 < f < 1 for f in lr_steps) or lr_steps != sorted(lr_steps):
            _fail("lr_steps", f"expected increasing fractions of the epochs in (0, 1), e.g. [0.6, 0.85], "
                              f"got {lr_steps!r}")

    methods = []
    for i, entry in enumerate(_list(raw.get("methods", []), "methods")):
        key = f"methods[{i}]"
        entry = {"name": entry} if isinstance(entry, str) else _mapping(entry, key, ("name", "label", "options", "set"))
        method = entry.get("name")
        if method not in available():
            close = difflib.get_close_matches(str(method), available(), n=1)
            _fail(f"{key}.name", f"unknown pruning method {method!r}" + (f"; did you mean {close[0]}?" if close
                                                                         else f"; valid: {', '.join(available())}"))
        overrides = _dotted(entry.get("set", {}), f"{key}.set")
        options = entry.get("options", {})
        if not isinstance(options, dict):
            _fail(f"{key}.options", f"expected a mapping of method settings, got {options!r}")
        _deep_update(overrides, {"prune": {"options": options}})
        _merge(copy.deepcopy(defaults), overrides, f"{key}.set.")
        methods.append(Method(name=method, label=str(entry.get("label", get_method(method).label)),
                              overrides=overrides))
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        _fail("methods", f"labels must differ (give the same method twice with a label each), got {labels}")

    budgets = []
    for i, budget in enumerate(_list(raw.get("budgets", ["match:resnet18"]), "budgets")):
        if isinstance(budget, str) and budget.startswith("match:"):
            _arch(budget.removeprefix("match:"), f"budgets[{i}]")
        elif not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and 0 < budget <= 1
                  or isinstance(budget, str) and _latency_budget(budget) is not None):
            _fail(f"budgets[{i}]", f"expected a fraction of {prune_arch}'s MACs kept in (0, 1], match:ARCH "
                                   f"(e.g. match:resnet18) or latency:F (a fraction of its measured latency kept, "
                                   f"e.g. latency:0.5), got {budget!r}")
        budgets.append(budget)

    seeds = [_int(s, f"seeds[{i}]", 0) for i, s in enumerate(_list(raw.get("seeds", [0]), "seeds"))]
    if len(set(seeds)) != len(seeds):
        _fail("seeds", f"seeds must differ, got {seeds}")

    cross = []
    for i, entry in enumerate(_list(raw.get("cross_domain", []), "cross_domain")):
        key = f"cross_domain[{i}]"
        entry = _mapping(entry, key, ("source", "target", "methods"))
        for side in ("source", "target"):
            if entry.get(side) not in datasets:
                _fail(f"{key}.{side}", f"{entry.get(side)!r} is not in datasets ({', '.join(datasets)})")
        if entry["source"] == entry["target"]:
            _fail(key, "source and target must be different datasets")
        chosen = [str(m) for m in _list(entry.get("methods", labels), f"{key}.methods")]
        for j, label in enumerate(chosen):
            if label not in labels:
                _fail(f"{key}.methods[{j}]", f"{label!r} is not the label of a method in methods ({', '.join(labels)})")
        cross.append(CrossDomain(source=entry["source"], target=entry["target"], methods=chosen))
    if not compare and not cross:
        _fail("compare", "nothing to run: compare lists no dataset and there is no cross_domain scenario")

    name = str(raw.get("name", name))
    return Bench(name=name, output=str(raw.get("output", f"runs/bench/{name}")), input_size=input_size, base=base,
                 datasets=datasets, compare=compare, baselines=baselines, lr_steps=lr_steps, prune_arch=prune_arch,
                 methods=methods, budgets=budgets,
                 finetune_epochs=_int(raw.get("finetune_epochs", 0), "finetune_epochs", 0), seeds=seeds,
                 cross_domain=cross,
                 latency_batch_sizes=list(defaults.eval.latency_batch_sizes) if defaults.eval.latency else [],
                 latency_threads=_int(raw.get("latency_threads", 1), "latency_threads", 0),
                 raw=raw)


def load_bench(path: str | Path, overrides: Sequence[str] = ()) -> Bench:
    """Read a bench YAML file, apply ``key.path=value`` overrides (e.g. ``seeds=[0,1]``) and check it."""
    path = Path(path)
    raw = read_yaml(path, "bench file")
    if not isinstance(raw, dict):
        raise ConfigError(f"bench file {str(path)!r}: expected a mapping of bench keys ({', '.join(BENCH_KEYS)})")
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for depth, name in enumerate(keys[:-1]):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[:depth + 1])} is not a mapping")
        node[keys[-1]] = value
    return parse_bench(raw, path.stem)


# ---------------------------------------------------------------------------------------------- cells and rows


@dataclass
class Cell:
    """One trained model: a baseline (``kind="train"``) or a pruned and fine-tuned one (``kind="prune"``)."""

    key: str
    kind: str
    cfg: Config
    dataset: str  # the data it was trained or fine-tuned on
    pretrain: str  # the data its starting model was trained on (= dataset for baselines)
    seed: int
    arch: str
    method: Method | None = None
    budget: str = ""
    target_macs: float | None = None
    parent: Cell | None = None
    target_latency: float | None = None

    def describe(self) -> str:
        if self.kind == "train":
            return f"train {self.arch} on {self.dataset} (seed {self.seed})"
        source = f"{self.pretrain}-trained " if self.pretrain != self.dataset else ""
        target = (f"{self.target_macs:.3f} of its MACs" if self.target_latency is None
                  else f"{self.target_latency:.3f} of its measured latency")
        return (f"prune {source}{self.arch} with {self.method.label} to {target}, "
                f"fine-tune on {self.dataset} (seed {self.seed})")


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


def _hashed(cfg: Config) -> dict[str, Any]:
    values = cfg.to_dict()
    for section, keys in UNHASHED.items():
        if keys is None:
            values.pop(section)
        else:
            for key in keys:
                values[section].pop(key)
    defaults = Config().to_dict()
    for section, key in LATER_KEYS:
        if values[section][key] == defaults[section][key]:
            values[section].pop(key)
    return values


def _cell_key(prefix: str, spec: dict[str, Any]) -> str:
    world = env_world_size()
    if world > 1:
        # N ranks train with a global batch of N x P x K images: another experiment than one process's.
        spec = {**spec, "world_size": world}
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', prefix)}-{digest}"


def budget_label(budget: str | float) -> str:
    return budget if isinstance(budget, str) else f"{budget:g}"


def _latency_budget(label: str) -> float | None:
    """The F of a ``latency:F`` budget label when it is a fraction in (0, 1], else None."""
    if not label.startswith("latency:"):
        return None
    try:
        value = float(label.removeprefix("latency:"))
    except ValueError:
        return None
    return value if 0 < value <= 1 else None


def budget_targets(label: str, value: float) -> dict[str, float | None]:
    """The prune targets of a resolved budget: ``target_latency`` for ``latency:F``, else ``target_macs``."""
    latency = label.startswith("latency:")
    return {"target_macs": None if latency else value, "target_latency": value if latency else None}


def describe_budget(label: str, value: float, arch: str) -> str:
    return f"{label} = {value:.3f} of {arch}'s {'measured latency' if label.startswith('latency:') else 'MACs'} kept"


def resolve_budgets(bench: Bench) -> dict[str, float]:
    """Budget label -> fraction of ``prune_arch``'s MACs kept; ``match:ARCH`` counts both nets at the input size.

    A ``latency:F`` budget resolves to F, the fraction of the latency kept (:func:`budget_targets`).
    """
    cfg = bench.run_config(bench.compare[0] if bench.compare else bench.cross_domain[0].source,
                           bench.baseline(bench.prune_arch), bench.seeds[0])
    size = (cfg.data.height, cfg.data.width)
    m = cfg.model

    def macs(arch: str) -> int:
        net = build_model(arch, last_stride=m.last_stride, pooling=m.pooling, neck=m.neck,
                          embedding_dim=m.embedding_dim)
        return complexity(net, size)["macs"]

    reference = macs(bench.prune_arch)
    resolved = {}
    for budget in bench.budgets:
        label = budget_label(budget)
        if isinstance(budget, str) and budget.startswith("match:"):
            resolved[label] = round(macs(budget.removeprefix("match:")) / reference, 4)
        else:
            resolved[label] = _latency_budget(label) if isinstance(budget, str) else float(budget)
    return resolved


def plan_bench(bench: Bench) -> Plan:
    """Every cell (in run order, each once) and every result row of the bench."""
    budgets = resolve_budgets(bench)
    cells: dict[str, Cell] = {}
    rows: list[RowSpec] = []

    def trained(dataset: str, arch: str, seed: int) -> Cell:
        cfg = bench.run_config(dataset, bench.baseline(arch), seed)
        key = _cell_key(f"train-{dataset}-{arch}-s{seed}", {"kind": "train", "config": _hashed(cfg)})
        return cells.setdefault(key, Cell(key, "train", cfg, dataset, dataset, seed, arch))

    def pruned(pretrain: str, dataset: str, method: Method, budget: str, seed: int) -> Cell:
        parent = trained(pretrain, bench.prune_arch, seed)
        targets = budget_targets(budget, budgets[budget])
        cfg = bench.run_config(dataset, bench.baseline(bench.prune_arch), seed, method, **targets)
        source = f"{pretrain}-to-" if pretrain != dataset else ""
        key = _cell_key(f"prune-{source}{dataset}-{method.label}-{budget}-s{seed}",
                        {"kind": "prune", "config": _hashed(cfg), "parent": parent.key, "rules": PRUNING_RULES})
        return cells.setdefault(key, Cell(key, "prune", cfg, dataset, pretrain, seed, bench.prune_arch, method,
                                          budget, targets["target_macs"], parent, targets["target_latency"]))

    def method_name(method: Method, budget: str) -> str:
        return method.label if len(budgets) == 1 else f"{method.label} @ {budget}"

    for seed in bench.seeds:
        for dataset in bench.compare:
            for baseline in bench.baselines:
                rows.append(RowSpec("in_domain", _arch_label(baseline.arch), trained(dataset, baseline.arch, seed),
                                    dataset))
            for method in bench.methods:
                for budget in budgets:
                    rows.append(RowSpec("in_domain", method_name(method, budget),
                                        pruned(dataset, dataset, method, budget, seed), dataset))
        for scenario in bench.cross_domain:
            a, b = scenario.source, scenario.target
            rows.append(RowSpec("cross_domain", _arch_label(bench.prune_arch), trained(a, bench.prune_arch, seed), b))
            for method in (m for m in bench.methods if m.label in scenario.methods):
                for budget in budgets:
                    for finetune in (a, b):
                        rows.append(RowSpec("cross_domain", method_name(method, budget),
                                            pruned(a, finetune, method, budget, seed), b))
    return Plan(list(cells.values()), rows, budgets)


def check_plan(plan: Plan, *, verbose: bool = False, dry_run: bool = False) -> None:
    """Fail before any training: every dataset must parse, every method must accept its settings and reach its budget.

    The budget of each pruning cell is planned on a fresh model of the pruned architecture
    (the channel counts depend on the architecture, not on the trained weights), so an
    unreachable budget stops the bench now, not after the baselines have trained.
    ``dry_run`` checks the dataset roots and file names only: it neither generates synthetic
    data nor decodes images.
    """
    seen_data, seen_budgets = set(), set()
    for cell in plan.cells:
        data = json.dumps(dataclasses.asdict(cell.cfg.data), sort_keys=True)
        if data not in seen_data:
            seen_data.add(data)
            try:
                if not dry_run:
                    prepare_dataset(cell.cfg.data, verbose=verbose)
                elif cell.cfg.data.dataset != "synthetic":  # generated data is written when the bench runs
                    parse_dataset(cell.cfg.data)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"bench dataset {cell.dataset}: {exc}") from exc
        if cell.kind == "prune":
            where = f"bench method {cell.method.label}"
            try:
                pruner = pruner_from_config(cell.cfg)
            except (ValueError, NotImplementedError) as exc:
                raise ConfigError(f"{where}: {exc}") from exc
            if pruner.requires == "training" and cell.cfg.prune.finetune_epochs < 1:
                raise ConfigError(f"{where}: {cell.method.name} prunes during fine-tuning; "
                                  "set finetune_epochs (or its prune.finetune_epochs) to 1 or more")
            model_config = {**model_config_for(cell.cfg, 0), "pretrained": "none"}  # MACs do not count the classifier
            key = json.dumps([pruner.scope, pruner.include, pruner.min_channels, pruner.round_to,
                              dataclasses.asdict(pruner.target), pruner.input_size, model_config],
                             sort_keys=True, default=str)
            if key not in seen_budgets:
                seen_budgets.add(key)
                try:
                    pruner.check(build_model(**model_config))
                except ValueError as exc:
                    raise ConfigError(f"{where} at budget {cell.budget}: {exc}") from exc


def _threads(bench: Bench) -> str:
    n = bench.latency_threads or torch.get_num_threads()
    return f"{n} thread{'s' if n > 1 else ''}"


def latency_compute(plan: Plan) -> ComputeSettings:
    """The precision and memory format the bench times its models in: the base config's, on the CPU."""
    return ComputeSettings.from_config(plan.cells[0].cfg.train, "cpu")


def _latency_compute_text(plan: Plan) -> str:
    compute = latency_compute(plan)
    return f"{compute.precision}, {compute.memory_format_name}"


def _arch_label(arch: str) -> str:
    return arch.replace("resnet", "ResNet")


# ---------------------------------------------------------------------------------------------- running cells


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a crash never leaves a half-written marker."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def cell_checkpoint(cell: Cell, folder: Path) -> Path:
    """The model file a finished cell leaves: the last epoch of training, or the pruned model."""
    return folder / "run" / "last.pt" if cell.kind == "train" else folder / "pruned.pt"


def model_cost(checkpoint: Path, input_size: tuple[int, int]) -> dict[str, int]:
    """Parameters of the deployed network (the identity classifier is used only in training), and MACs."""
    model = load_model(checkpoint)
    cost = complexity(model, input_size)
    classifier = sum(p.numel() for p in model.classifier.parameters()) if model.classifier is not None else 0
    return {"params": cost["params"] - classifier, "macs": cost["macs"], "classifier_params": classifier}


def _run_train(cell: Cell, folder: Path, progress: bool) -> dict[str, Any] | None:
    run = folder / "run"
    # Under torchrun rank 0 looks at the files and decides for all ranks; only rank 0 returns the result.
    resume = broadcast_object(is_main_process() and (run / "last.pt").is_file())
    if not resume and is_main_process():
        shutil.rmtree(folder, ignore_errors=True)  # a stop before the first epoch's checkpoint: start clean
    barrier()
    train(cell.cfg, output=run, resume=resume, progress=progress)
    if not is_main_process():
        return None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    final = records[-1]  # the last epoch is always evaluated; the bench reports it (no pick of the best epoch)
    return {"metrics": {k: final[k] for k in METRICS},
            # Sum of epoch times: counts the epochs of every attempt once, even across resumes.
            "wall_seconds": round(sum(r["seconds"] for r in records), 1)}


def _with_new_classifier(checkpoint: Path, num_classes: int, seed: int, path: Path) -> Path:
    """A copy of ``checkpoint`` whose identity classifier is new, for the identities of another dataset.

    Every rank builds the same model (the seed decides the classifier); rank 0 writes it.
    """
    ckpt = read_checkpoint(checkpoint)
    config = dict(ckpt["model_config"], num_classes=num_classes)
    seed_everything(seed)
    model = build_model(**config)  # initialises the classifier as training does
    apply_widths(model, {k: w for k, w in ckpt["widths"].items() if not k.startswith("classifier")})
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise ValueError(f"{checkpoint}: weights do not match the architecture ({missing + unexpected})")
    if is_main_process():
        save_checkpoint(path, model, config)
    barrier()
    return path


def _run_prune(cell: Cell, folder: Path, parent_folder: Path, progress: bool) -> dict[str, Any] | None:
    if is_main_process():
        shutil.rmtree(folder, ignore_errors=True)  # pruning is not resumable: redo an interrupted one
        folder.mkdir(parents=True)
    barrier()
    start = cell_checkpoint(cell.parent, parent_folder)
    started = time.perf_counter()
    if cell.dataset != cell.pretrain and cell.cfg.loss.id_weight > 0:
        # Fine-tuning on other people: the identity loss needs a classifier over the new identities.
        num_classes = prepare_dataset(cell.cfg.data, verbose=False).num_train_pids
        start = _with_new_classifier(start, num_classes, cell.seed, folder / "start.pt")
    report = prune_checkpoint(cell.cfg, start, output=folder, progress=progress)
    if not is_main_process():
        return None
    final = report["finetuned"] or report["pruned"]
    after_cut = report["pruned"]
    return {"metrics": {k: final[k] for k in METRICS},
            "pruned_metrics": {k: after_cut[k] for k in METRICS} if after_cut else None,
            "wall_seconds": round(time.perf_counter() - started, 1)}


def run_cell(cell: Cell, cells_dir: Path, *, progress: bool = True) -> tuple[dict[str, Any], bool]:
    """Run ``cell`` unless it is finished. Returns (its result, whether it was cached).

    Under torchrun every rank trains; rank 0 alone reads and writes the cell's files and
    sends the result to the others.
    """
    folder = cells_dir / cell.key
    done = broadcast_object(_read_json(folder / DONE) if is_main_process() else None)
    if done is not None:
        return done, True
    if cell.kind == "train":
        result = _run_train(cell, folder, progress)
    else:
        result = _run_prune(cell, folder, cells_dir / cell.parent.key, progress)
    if is_main_process():
        result.update(model_cost(cell_checkpoint(cell, folder), (cell.cfg.data.height, cell.cfg.data.width)))
        result["key"] = cell.key
        result["config"] = cell.cfg.to_dict()
        _write_json(folder / DONE, result)  # last: the marker that the cell is finished
    return broadcast_object(result), False


def evaluate_on(cell: Cell, dataset: str, data: DataConfig, cells_dir: Path, *,
                progress: bool = True) -> dict[str, Any]:
    """mAP/rank-k of a finished cell's model on another dataset (cached beside the cell).

    Under torchrun every rank calls this: rank 0 evaluates alone and sends the numbers.
    """
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(data), sort_keys=True).encode()).hexdigest()[:10]
    path = cells_dir / cell.key / f"eval-{dataset}-{digest}.json"
    cached = broadcast_object(_read_json(path) if is_main_process() else None)
    if cached is not None:
        return cached
    cfg = copy.deepcopy(cell.cfg)
    cfg.data = data
    parsed = prepare_dataset(data, verbose=False)  # on every rank: generating a dataset is a collective
    result = None
    if is_main_process():
        report = evaluate_checkpoint(cfg, cell_checkpoint(cell, cells_dir / cell.key), progress=progress,
                                     dataset=parsed)
        result = {k: report[k] for k in METRICS}
        _write_json(path, result)
    return broadcast_object(result)


def cell_latencies(cells: Sequence[Cell], cells_dir: Path, batch_sizes: Sequence[int], threads: int, *,
                   compute: ComputeSettings | None = None, rounds: int = LATENCY_ROUNDS) -> dict[str, dict[str, float]]:
    """CPU milliseconds per image of each cell's model at each batch size: {cell key: {"batchB": ms}}.

    The models not measured before are timed in turns, ``rounds`` times each (3 timed passes
    per turn, median of the turns), so that a change of machine load hits them all alike,
    with ``threads`` CPU threads (0: torch's default), at ``compute``'s precision and memory
    format (default fp32, NCHW); the numbers are then cached beside each cell (``latency.json``).
    """
    compute = compute or ComputeSettings(torch.device("cpu"))
    wanted = {"batches": [f"batch{b}" for b in batch_sizes], "threads": threads, "precision": compute.precision,
              "memory_format": compute.memory_format_name}
    latencies, models = {}, {}
    for cell in cells:
        cached = _read_json(cells_dir / cell.key / "latency.json")
        if cached is not None and cached["setting"] == wanted:
            latencies[cell.key] = cached["latency_ms"]
        else:
            models[cell.key] = (load_model(cell_checkpoint(cell, cells_dir / cell.key)),
                                (cell.cfg.data.height, cell.cfg.data.width))
    samples: dict[str, dict[str, list[float]]] = {key: {b: [] for b in wanted["batches"]} for key in models}
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        for _ in range(rounds):
            for key, (model, size) in models.items():
                for batch, ms in measure_latency(model, size, batch_sizes=tuple(batch_sizes), device="cpu", warmup=1,
                                                 repeats=3, precision=compute.precision,
                                                 channels_last=compute.channels_last).items():
                    samples[key][batch].append(ms)
    finally:
        torch.set_num_threads(default_threads)
    for key, per_batch in samples.items():
        latencies[key] = {batch: round(statistics.median(times), 3) for batch, times in per_batch.items()}
        _write_json(cells_dir / key / "latency.json", {"latency_ms": latencies[key], "setting": wanted})
    return latencies


# ---------------------------------------------------------------------------------------------- the run


def run_bench(bench: Bench, output: str | Path | None = None, *, progress: bool = True,
              log: Callable[[str], None] = print, command: str = "") -> dict[str, Any]:
    """Run every unfinished cell of ``bench``, then write the results under ``output``.

    Under ``torchrun`` every rank trains and prunes each cell (DDP); rank 0 alone logs,
    evaluates on other datasets, measures latency and writes files, and every rank
    returns its summary.

    Returns the content of ``results.json``: {"rows": [...], "budgets": {...}, ...}.
    """
    out = check_output_dir(output or bench.output, "--output")
    main = is_main_process()
    log = log if main else _silent
    plan = plan_bench(bench)
    check_plan(plan, verbose=progress)
    cells_dir = out / "cells"
    if main:
        cells_dir.mkdir(parents=True, exist_ok=True)
        (out / "bench.yaml").write_text(yaml.safe_dump(bench.raw, sort_keys=False))
    results: dict[str, dict[str, Any]] = {}
    evaluations: dict[tuple[str, str], dict[str, Any]] = {}
    for i, cell in enumerate(plan.cells, 1):
        log(f"[{i}/{len(plan.cells)}] {cell.describe()}")
        results[cell.key], cached = run_cell(cell, cells_dir, progress=progress)
        if cached:
            log("    finished earlier (cached)")
        else:
            metrics = results[cell.key]["metrics"]
            log(f"    done in {results[cell.key]['wall_seconds'] / 60:.1f} min: mAP {metrics['mAP']:.1f}, "
                f"rank-1 {metrics['rank1']:.1f}")
        for row in plan.rows:
            if row.cell is cell and row.dataset != cell.dataset and (cell.key, row.dataset) not in evaluations:
                evaluations[cell.key, row.dataset] = evaluate_on(cell, row.dataset, bench.data_config(row.dataset),
                                                                 cells_dir, progress=progress)
        if main:
            write_results(bench, plan, out, results, evaluations, {}, command=command, final=False)
    summary = None
    if main:
        latencies: dict[str, dict[str, float]] = {}
        if bench.latency_batch_sizes:
            batches = ", ".join(map(str, bench.latency_batch_sizes))
            log(f"measuring the CPU latency of {len(plan.cells)} models (batch {batches}, {_threads(bench)}, "
                f"{_latency_compute_text(plan)})")
            latencies = cell_latencies(plan.cells, cells_dir, bench.latency_batch_sizes, bench.latency_threads,
                                       compute=latency_compute(plan))
        summary = write_results(bench, plan, out, results, evaluations, latencies, command=command)
        log(f"wrote {out / 'results.md'}, results.csv, results.json"
            + (", pareto.png" if summary["plot"] else f"; {PLOT_NOTE}"))
    return broadcast_object(summary)  # the other ranks wait here while rank 0 times the models


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


# ---------------------------------------------------------------------------------------------- results


def result_rows(plan: Plan, results: dict[str, dict[str, Any]], evaluations: dict[tuple[str, str], dict[str, Any]],
                latencies: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One flat record per result row whose cell has finished."""
    rows = []
    for spec in plan.rows:
        cell, result = spec.cell, results.get(spec.cell.key)
        if result is None or (spec.dataset != cell.dataset and (cell.key, spec.dataset) not in evaluations):
            continue
        metrics = result["metrics"] if spec.dataset == cell.dataset else evaluations[cell.key, spec.dataset]
        pruned = result.get("pruned_metrics") if spec.dataset == cell.dataset else None
        row = {
            "scenario": spec.scenario, "name": spec.name, "kind": "baseline" if cell.kind == "train" else "pruned",
            "arch": cell.arch, "method": cell.method.name if cell.method else "", "budget": cell.budget,
            "target_macs": cell.target_macs, "target_latency": cell.target_latency, "pretrain": cell.pretrain,
            "finetune": cell.dataset if cell.kind == "prune" else "", "dataset": spec.dataset, "seed": cell.seed,
            "params": result["params"], "macs": result["macs"],
        }
        row.update({f"latency_ms_{batch}": ms for batch, ms in latencies.get(cell.key, {}).items()})
        row.update({k: round(metrics[k], 2) for k in METRICS})
        row.update({f"pruned_{k}": round(pruned[k], 2) if pruned else None for k in ("mAP", "rank1")})
        row["wall_seconds"] = result["wall_seconds"]
        row["cell"] = cell.key
        rows.append(row)
    return rows


def _stat(values: Sequence[float], digits: int, *, spread: bool = True) -> str:
    """Mean, and ± the sample standard deviation of several values when ``spread``."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if spread and len(values) > 1:
        return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return f"{mean:.{digits}f}"


def _groups(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    return groups


def _cost_cells(rows: list[dict[str, Any]], latency_key: str | None) -> list[str]:
    # Sizes follow from the architecture (the same for every seed of one-shot methods): means only.
    cells = [_stat([r["params"] / 1e6 for r in rows], 2, spread=False),
             _stat([r["macs"] / 1e9 for r in rows], 3, spread=False)]
    if latency_key:
        cells.append(_stat([r[latency_key] for r in rows if r.get(latency_key) is not None], 2))
    return cells


def _markdown_table(headers: Sequence[str], lines: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A markdown table: the first ``text_columns`` columns left-aligned, the numbers right-aligned."""
    align = ["---" if i < text_columns else "---:" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def markdown_report(bench: Bench, plan: Plan, rows: list[dict[str, Any]], *, command: str, plot: bool,
                    final: bool, pending: int) -> str:
    """results.md: the in-domain table in the survey's Table 5 shape, then one table per cross-domain pair."""
    height, width = plan.cells[0].cfg.data.height, plan.cells[0].cfg.data.width
    latency_key = f"latency_ms_batch{bench.latency_batch_sizes[0]}" if bench.latency_batch_sizes else None
    if not any(latency_key in r for r in rows):
        latency_key = None  # not measured yet: the latency phase comes after every cell
    cost_headers = ["Parameters (M)", "GMACs"]
    if latency_key:
        cost_headers.append(f"CPU ms/image (batch {bench.latency_batch_sizes[0]}, {_threads(bench)}, "
                            f"{_latency_compute_text(plan)})")
    seeds = len(bench.seeds)
    lines = [f"# Benchmark {bench.name}", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    lines += [
        f"Input {height}x{width}. mAP and R-1 (rank-1) in %, on each dataset's query/gallery split (Market-1501 "
        f"protocol), of the model after its last epoch; "
        + (f"mean ± sample standard deviation over {seeds} seeds ({', '.join(map(str, bench.seeds))})."
           if seeds > 1 else f"one seed ({bench.seeds[0]}): differences of a point or two are within noise."),
        "GMACs: multiply-accumulates per image at batch 1 (GFLOPs = 2 x GMACs). Parameters: the deployed network, "
        "without the identity classifier used only in training."
        + (f" CPU latency: milliseconds per image with {_threads(bench)}, median of {LATENCY_ROUNDS} turns in which "
           "the models are timed one after the other, after training." if latency_key else ""),
        "Budgets: " + ", ".join(describe_budget(label, value, _arch_label(bench.prune_arch))
                                for label, value in plan.budgets.items()) + ".",
        "",
    ]
    if pending:
        lines += [f"**Partial results: {pending} of {len(plan.cells)} cells are not finished yet.**", ""]
    in_domain = [r for r in rows if r["scenario"] == "in_domain"]
    if in_domain:
        headers = ["Networks", *cost_headers] + [f"{d} {m}" for d in bench.compare for m in ("mAP", "R-1")]
        table = []
        for name, group in _groups(in_domain, lambda r: r["name"]).items():
            by_dataset = _groups(group, lambda r: r["dataset"])
            scores = []
            for dataset in bench.compare:
                runs = by_dataset.get(dataset, [])
                scores += [_stat([r["mAP"] for r in runs], 1), _stat([r["rank1"] for r in runs], 1)]
            table.append([name, *_cost_cells(group, latency_key), *scores])
        lines += ["## Baselines and pruned models (survey Table 5 layout)", "", _markdown_table(headers, table), ""]
    for scenario in bench.cross_domain:
        a, b = scenario.source, scenario.target
        group_rows = [r for r in rows if r["scenario"] == "cross_domain" and r["pretrain"] == a and r["dataset"] == b]
        if not group_rows:
            continue
        table = []
        for (name, finetune), group in _groups(group_rows, lambda r: (r["name"], r["finetune"])).items():
            how = f"pruned and fine-tuned on {finetune}" if finetune else f"no pruning, no fine-tuning (trained on {a})"
            table.append([name, how, *_cost_cells(group, latency_key), _stat([r["mAP"] for r in group], 1),
                          _stat([r["rank1"] for r in group], 1)])
        headers = ["Networks", "adaptation", *cost_headers, f"{b} mAP", f"{b} R-1"]
        lines += [f"## Cross-domain: trained on {a}, evaluated on {b}", "", _markdown_table(headers, table, 2), ""]
    hours = sum({r["cell"]: r["wall_seconds"] for r in rows}.values()) / 3600
    lines += [f"Compute: {hours:.2f} h of training, pruning and fine-tuning over {len({r['cell'] for r in rows})} "
              "cells (per-model wall times in results.csv).", ""]
    if plot:
        lines += ["![mAP against GMACs](pareto.png)", ""]
    else:
        lines += [PLOT_NOTE if final else "pareto.png is drawn when the run ends.", ""]
    return "\n".join(lines)


def pareto_plot(bench: Bench, rows: list[dict[str, Any]], path: Path) -> bool:
    """mAP against GMACs, one panel per results table, baselines joined as a curve. False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    panels = [(f"{d} (in-domain)", [r for r in rows if r["scenario"] == "in_domain" and r["dataset"] == d])
              for d in bench.compare]
    panels += [(f"trained on {c.source}, evaluated on {c.target}",
                [r for r in rows if r["scenario"] == "cross_domain" and r["pretrain"] == c.source
                 and r["dataset"] == c.target]) for c in bench.cross_domain]
    panels = [(title, group) for title, group in panels if group]
    if not panels:
        return False
    fig = Figure(figsize=(6.4 * len(panels), 4.8), layout="constrained")
    for ax, (title, group) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        in_domain, target = group[0]["scenario"] == "in_domain", group[0]["dataset"]
        points = []  # (GMACs, mean mAP, std mAP, name, fine-tuning data, kind): one per model over its seeds
        for (name, finetune, kind), runs in _groups(group, lambda r: (r["name"], r["finetune"], r["kind"])).items():
            maps = [r["mAP"] for r in runs]
            points.append((statistics.fmean(r["macs"] for r in runs) / 1e9, statistics.fmean(maps),
                           statistics.stdev(maps) if len(maps) > 1 else 0.0, name, finetune, kind))
        baselines = sorted((p for p in points if p[5] == "baseline"), key=lambda p: p[0])
        if baselines:
            ax.errorbar([p[0] for p in baselines], [p[1] for p in baselines], yerr=[p[2] for p in baselines],
                        fmt="-o", color="black", capsize=3,
                        label="baselines" if in_domain else f"not pruned, trained on {group[0]['pretrain']}")
            for x, y, _, name, _, _ in baselines:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
        for x, y, err, name, finetune, _ in (p for p in points if p[5] == "pruned"):
            ax.errorbar([x], [y], yerr=[err], fmt="s" if finetune == target else "^", capsize=3,
                        label=name if in_domain else f"{name}, fine-tuned on {finetune}")
        ax.set(title=title, xlabel="GMACs per image", ylabel="mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    return True


def write_results(bench: Bench, plan: Plan, out: Path, results: dict[str, dict[str, Any]],
                  evaluations: dict[tuple[str, str], dict[str, Any]], latencies: dict[str, dict[str, float]], *,
                  command: str = "", final: bool = True) -> dict[str, Any]:
    """Write results.csv, results.json, results.md and, when ``final``, pareto.png; returns the JSON content."""
    rows = result_rows(plan, results, evaluations, latencies)
    pending = sum(1 for cell in plan.cells if cell.key not in results)
    plotted = final and bool(rows) and pareto_plot(bench, rows, out / "pareto.png")
    summary = {
        "bench": bench.name, "command": command, "complete": pending == 0, "pending_cells": pending,
        "budgets": plan.budgets, "seeds": bench.seeds,
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "world_size": env_world_size(),
                        "latency_threads": bench.latency_threads or torch.get_num_threads(),
                        "latency_precision": latency_compute(plan).precision,
                        "latency_memory_format": latency_compute(plan).memory_format_name,
                        "machine": platform.machine(), "python": platform.python_version()},
        "plot": plotted, "rows": rows,
    }
    _write_json(out / "results.json", summary)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    fd, tmp = tempfile.mkstemp(prefix=".results.csv.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "results.csv")
    (out / "results.md").write_text(markdown_report(bench, plan, rows, command=command, plot=plotted, final=final,
                                                    pending=pending))
    return summary


# ---------------------------------------------------------------------------------------------- command line

SUMMARY = "benchmark: train baselines, prune with every method at one budget, tables and a Pareto plot"
DESCRIPTION = """\
Runs the survey's comparison from a bench file (configs/bench/*.yaml, see
docs/bench.md): trains the baseline architectures, prunes the prune_arch
baseline (ResNet-50) with every listed method at each budget (match:resnet18 =
ResNet-18's MACs; latency:0.5 = half its latency measured here), fine-tunes and evaluates each, optionally runs the
cross-domain scenario (train on A; prune and fine-tune with A or with B;
evaluate on B), and measures every model's CPU latency.

DIR gets results.csv and results.json (one row per model: params, MACs, CPU
latency, mAP, rank-1, wall time), results.md (the survey's Table 5 layout,
mean ± std over seeds) and pareto.png (needs matplotlib: the plot extra).
Each model is cached in DIR/cells/: run the same command again after a stop
and only unfinished models are computed (an interrupted training continues
from its last epoch).

examples:
  reid-prune bench --config configs/bench/synthetic_tiny.yaml --output runs/bench-tiny
  reid-prune bench --config configs/bench/cuhk03_cpu.yaml --dry-run
  reid-prune bench --config configs/bench/cuhk03_cpu.yaml --output runs/bench/cuhk03 --set seeds=[0,1,2]
  reid-prune bench --config configs/bench/market1501_gpu.yaml --set datasets.market1501.root=/data/Market-1501
  torchrun --nproc_per_node=4 -m reid_prune bench --config configs/bench/market1501_gpu.yaml \
      --set datasets.market1501.root=/data/Market-1501      (each cell on 4 GPUs, docs/multi_gpu.md)
"""


def add_bench_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand to the ``reid-prune`` parser (its function: :func:`cmd_bench`)."""
    parser = subparsers.add_parser("bench", help=SUMMARY, description=f"{SUMMARY}.\n\n{DESCRIPTION}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="bench file, e.g. configs/bench/cuhk03_cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a bench key, e.g. --set seeds=[0,1] or --set base.train.max_batches=2 "
                             "(repeatable)")
    parser.add_argument("--output", metavar="DIR", help="results folder (default: the bench file's output key, "
                                                        "else runs/bench/NAME)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the dataset roots, method settings and budgets, list the models the bench "
                             "would compute and which are already finished, then stop")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or dataset summaries")
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run (or with ``--dry-run`` list) the bench of ``args.config``."""
    bench = load_bench(args.config, args.overrides)
    output = check_output_dir(args.output or bench.output, "--output")
    if args.dry_run:
        plan = plan_bench(bench)
        check_plan(plan, dry_run=True)  # dataset roots, method settings and budgets
        if is_main_process():
            for i, cell in enumerate(plan.cells, 1):
                folder = output / "cells" / cell.key
                state = "finished" if (folder / DONE).is_file() else "started" if folder.exists() else "to run"
                print(f"[{i}/{len(plan.cells)}] {state:8}  {cell.describe()}  ({folder})")
            print("budgets: " + ", ".join(describe_budget(k, v, bench.prune_arch) for k, v in plan.budgets.items()))
        return 0
    command = shlex.join(["reid-prune", "bench", "--config", args.config,
                          *[a for o in args.overrides for a in ("--set", o)],
                          *(["--output", args.output] if args.output else [])])
    run_bench(bench, output, progress=not args.quiet, command=command)
    return 0
