"""Planning a bench: every cell (a trained, pruned, scratch-trained or anchor model), its cache key, every row.

Each cell's run config comes from :mod:`.configs`, its key from :mod:`.keys` (the cache-key
policy); :func:`check_plan` then checks every dataset and budget before any training.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

from ..backbone import build_model
from ..config import ConfigError, validate
from ..config_fields import merge
from ..evaluation import complexity
from ..jobs.prune import pruner_from_config
from ..jobs.wiring import model_config_for, parse_dataset, prepare_dataset, with_validation
from ..runtime import Runtime
from .cellspec import Cell, Plan, RowSpec
from .configs import data_config, finetune_seeds_of, run_config, stretched
from .keys import PRUNING_RULES, cell_key, hashed, reads_evaluation
from .schema import Bench
from .sources import check_fits, networks, read_source, source_key, source_of
from .specs import AnchorSpec, BudgetSpec, MethodSpec

DENSE = "Dense (fine-tuned)"  # the row of the dense reference (bench key dense)


def budget_targets(label: str, value: float) -> dict[str, float | None]:
    """The prune targets of a resolved budget: ``target_latency`` for ``latency:F``, else ``target_macs``."""
    latency = label.startswith("latency:")
    return {"target_macs": None if latency else value, "target_latency": value if latency else None}


def describe_budget(label: str, value: float, arch: str) -> str:
    return f"{label} = {value:.3g} of {arch}'s {'measured latency' if label.startswith('latency:') else 'MACs'} kept"


def adaptation(group: dict[str, Any], source: str) -> str:
    """What a cross-domain row's model went through after training on ``source``, in words (results.md)."""
    if not group["finetune"]:
        return f"no pruning, no fine-tuning (trained on {source})"
    if group["kind"] == "dense":
        return f"not pruned, fine-tuned on {group['finetune']}"
    if group.get("prune_data") not in ("", None, group["finetune"]):
        return f"pruned on {group['prune_data']}, fine-tuned on {group['finetune']}"
    return f"pruned and fine-tuned on {group['finetune']}"


def resolve_budgets(bench: Bench) -> dict[str, float]:
    """Budget label -> fraction of ``prune_arch``'s MACs kept; ``match:ARCH`` counts both nets at the input size.

    A ``latency:F`` budget resolves to F, the fraction of the latency kept (:func:`budget_targets`).
    """
    cfg = run_config(bench, bench.compare[0] if bench.compare else bench.cross_domain[0].source,
                     bench.baseline(bench.prune_arch), bench.seeds[0])
    size = (cfg.data.height, cfg.data.width)
    m = cfg.model

    source = bench.baseline(bench.prune_arch).checkpoint
    stem = read_source(Path(source)).model_config.get("stem", "torchvision") if source else "torchvision"

    def macs(arch: str) -> int:  # both with the source's stem (an imported fast-reid model's differs)
        net = build_model(arch, last_stride=m.last_stride, pooling=m.pooling, neck=m.neck,
                          embedding_dim=m.embedding_dim, stem=stem)
        return complexity(net, size)["macs"]

    reference = macs(bench.prune_arch)
    resolved = {}
    for b in bench.budgets:
        if isinstance(b.value, str) and b.value.startswith("match:"):
            resolved[b.label] = round(macs(b.value.removeprefix("match:")) / reference, 4)
        else:
            resolved[b.label] = b.latency if b.latency is not None else float(b.value)
    return resolved


def torch_pruning_version() -> str | None:
    """The installed torch-pruning's version (the ``bench`` extra), or None."""
    if importlib.util.find_spec("torch_pruning") is None:
        return None
    import torch_pruning

    return str(torch_pruning.__version__)


def plan_bench(bench: Bench) -> Plan:
    """Every cell (in run order, each once) and every result row of the bench."""
    budgets = resolve_budgets(bench)
    cells: dict[str, Cell] = {}
    rows: list[RowSpec] = []
    arch, tp_version = bench.prune_arch, torch_pruning_version()
    notes = [] if tp_version or not bench.anchors else [
        "Torch-Pruning anchors (and methods at their widths) not run: torch-pruning is not installed "
        "(pip install 'reid-prune[bench]')"]

    def add(cell: Cell) -> Cell:
        return cells.setdefault(cell.key, cell)

    def suffix(seed: int, finetune_seed: int | None) -> str:
        return f"-s{seed}" + ("" if finetune_seed is None else f"-ft{finetune_seed}")

    def trained(dataset: str, arch_: str, seed: int) -> Cell:
        baseline = bench.baseline(arch_)
        cfg = run_config(bench, dataset, baseline, seed)
        if baseline.checkpoint:  # adopted, not trained: one cell per dataset whatever the seed (sources.py)
            index = bench.baselines.index(baseline)
            try:
                source = read_source(Path(baseline.checkpoint))
            except ValueError as exc:
                raise ConfigError(f"bench key baselines[{index}].checkpoint: {exc}") from None
            check_fits(cfg, source, baseline, index)
            key = cell_key(f"checkpoint-{dataset}-{arch_}-{source.path.stem}", source_key(source, cfg, hashed(cfg)))
            return add(Cell(key, "train", cfg, dataset, dataset, seed, arch_, baseline.label, source=source))
        key = cell_key(f"train-{dataset}-{arch_}-s{seed}", {"kind": "train", "config": hashed(cfg)})
        return add(Cell(key, "train", cfg, dataset, dataset, seed, arch_, baseline.label))

    def reads_data(method: MethodSpec, budget: BudgetSpec) -> bool:
        """Whether the method's pruning reads data (scores batches): it can prune with other data than it
        fine-tunes with. Weight criteria and methods that prune while they fine-tune cannot."""
        targets = budget_targets(budget.label, budgets[budget.label])
        cfg = run_config(bench, bench.cross_domain[0].source, bench.baseline(arch), bench.seeds[0], method,
                         targets["target_macs"], target_latency=targets["target_latency"])
        try:
            return pruner_from_config(cfg).requires == "data"
        except (ValueError, NotImplementedError) as exc:
            raise ConfigError(f"bench method {method.label}: {exc}") from exc

    def pruned(pretrain: str, dataset: str, method: MethodSpec, budget: BudgetSpec, seed: int,
               ft: int | None, prune_on: str = "") -> Cell:
        parent = trained(pretrain, arch, seed)
        prune_on = "" if prune_on == dataset else prune_on  # "": pruned with its fine-tuning data
        # A method at another's (or an anchor's) widths: its cell runs after that one and reads the widths it kept.
        same_widths = (widths_of(method.widths, pretrain, dataset, budget, seed, ft, prune_on) if method.widths
                       else None)
        targets = budget_targets(budget.label, budgets[budget.label])
        cfg = run_config(bench, dataset, bench.baseline(arch), seed if ft is None else ft, method,
                         targets["target_macs"], target_latency=targets["target_latency"])
        reads = reads_evaluation(cfg, f"bench method {method.label}")
        source = f"{pretrain}-to-" if pretrain != dataset else ""
        # Pruned with other data than its fine-tuning data (a cross_domain prune_data): that data is in its key.
        prune_data = data_config(bench, prune_on) if prune_on else None
        other = {"prune_data": hashed(dataclasses.replace(cfg, data=prune_data))["data"]} if prune_on else {}
        on = f"pruned-on-{prune_on}-" if prune_on else ""
        key = cell_key(f"prune-{source}{dataset}-{on}{method.label}-{budget.label}{suffix(seed, ft)}",
                       {"kind": "prune", "config": hashed(cfg, reads), "parent": parent.key, "rules": PRUNING_RULES,
                        **({"widths": same_widths.key} if same_widths else {}), **other})
        return add(Cell(key, "prune", cfg, dataset, pretrain, seed, arch, method.label, method=method,
                        budget=budget.label, finetune_seed=ft, parent=parent, same_widths=same_widths,
                        prune_on=prune_on, prune_data=prune_data, **targets))

    def dense(pretrain: str, dataset: str, seed: int, ft: int | None) -> Cell:
        parent = trained(pretrain, arch, seed)
        # The prune job with nothing cut (rate 0 keeps every channel): the same fine-tuning, on the unpruned model.
        cfg = run_config(bench, dataset, bench.baseline(arch), seed if ft is None else ft, target_macs=1.0)
        merge(cfg, {"prune": {"target_macs": None, "rate": 0.0, "method": "haoli", "scope": "internal"}})
        source = f"{pretrain}-to-" if pretrain != dataset else ""
        key = cell_key(f"dense-{source}{dataset}{suffix(seed, ft)}", {"kind": "dense", "config": hashed(validate(cfg)),
                                                                       "parent": parent.key})
        return add(Cell(key, "dense", cfg, dataset, pretrain, seed, arch, DENSE, finetune_seed=ft, parent=parent,
                        target_macs=1.0))

    def from_scratch(dataset: str, budget: BudgetSpec, seed: int, ft: int | None) -> Cell:
        parent = pruned(dataset, dataset, bench.method(bench.scratch.widths), budget, seed, ft)
        cfg = run_config(bench, dataset, bench.baseline(arch), seed if ft is None else ft,
                         extra_epochs=bench.finetune_epochs)
        # With train_steps the source's epochs plus that many steps: whole epochs, counted when the data is read.
        extra = {"extra_steps": bench.train_steps} if bench.train_steps else {}
        key = cell_key(f"scratch-{dataset}-{bench.scratch.widths}-{budget.label}{suffix(seed, ft)}",
                       {"kind": "scratch", "config": hashed(cfg), "widths": parent.key, **extra})
        return add(Cell(key, "scratch", cfg, dataset, dataset, seed, arch, bench.scratch.label, budget=budget.label,
                        finetune_seed=ft, parent=parent, **extra,
                        **budget_targets(budget.label, budgets[budget.label])))

    def anchored(dataset: str, anchor: AnchorSpec, budget: BudgetSpec, seed: int, ft: int | None) -> Cell:
        parent = trained(dataset, arch, seed)
        cfg = run_config(bench, dataset, bench.baseline(arch), seed if ft is None else ft,
                         target_macs=budgets[budget.label])
        reads = ("model.retrieval_feature",) if anchor.importance == "taylor" else ()  # its Taylor loss reads it
        key = cell_key(f"anchor-{dataset}-{anchor.label}-{budget.label}{suffix(seed, ft)}",
                       {"kind": "anchor", "importance": anchor.importance, "last_stage": anchor.last_stage,
                        "torch_pruning": tp_version,
                        "config": hashed(cfg, reads), "parent": parent.key})
        return add(Cell(key, "anchor", cfg, dataset, dataset, seed, arch, anchor.label, anchor=anchor,
                        budget=budget.label, target_macs=budgets[budget.label], finetune_seed=ft, parent=parent))

    def widths_of(label: str, pretrain: str, dataset: str, budget: BudgetSpec, seed: int, ft: int | None,
                  prune_on: str = "") -> Cell:
        anchor = next((a for a in bench.anchors if a.label == label), None)
        if anchor is None:  # the widths of that method pruned with the same data, where its pruning reads data
            reference = bench.method(label)
            on = prune_on if prune_on and reads_data(reference, budget) else ""
            return pruned(pretrain, dataset, reference, budget, seed, ft, on)
        if pretrain != dataset:
            raise ConfigError(f"bench key methods: widths: {label} (an anchor) is for in-domain rows; anchors do not "
                              "run in cross_domain scenarios")
        return anchored(dataset, anchor, budget, seed, ft)

    def runs(method: MethodSpec, budget: BudgetSpec) -> bool:
        """Whether this machine can run the method at the budget: at an anchor's widths, only where it runs."""
        return method.widths not in {a.label for a in bench.anchors} or bool(tp_version and budget.latency is None)

    def name(label: str, budget: BudgetSpec) -> str:
        return label if len(budgets) == 1 else f"{label} @ {budget.label}"

    # (budget, fine-tuning seed) in rounds: each budget's first seed, then each budget's second, ...
    # Cells run in this order, so a bench stopped early has every method at every budget once.
    per_budget = [(b, finetune_seeds_of(bench, b)) for b in bench.budgets]
    rounds = [(budget, seeds[i]) for i in range(max((len(s) for _, s in per_budget), default=0))
              for budget, seeds in per_budget if i < len(seeds)]

    for seed in bench.seeds:
        for dataset in bench.compare:
            for baseline in bench.baselines:
                cell = trained(dataset, baseline.arch, seed)
                if cell.seed == seed:  # a checkpoint's one cell is one row, not one per seed
                    rows.append(RowSpec("in_domain", cell.label, cell, dataset))
            for ft in dict.fromkeys(ft for _, ft in rounds) if bench.dense else ():  # each fine-tuning seed once
                cell = dense(dataset, dataset, seed, ft)
                rows.append(RowSpec("in_domain", cell.label, cell, dataset))
            for budget, ft in rounds:
                for method in (m for m in bench.methods if runs(m, budget)):
                    rows.append(RowSpec("in_domain", name(method.label, budget),
                                        pruned(dataset, dataset, method, budget, seed, ft), dataset))
                for anchor in bench.anchors if tp_version and budget.latency is None else []:  # MACs budgets only
                    rows.append(RowSpec("in_domain", name(anchor.label, budget),
                                        anchored(dataset, anchor, budget, seed, ft), dataset))
                if bench.scratch is not None and budget.label in [BudgetSpec(b).label for b in
                                                                  bench.scratch.budgets or [budget.label]]:
                    rows.append(RowSpec("in_domain", name(bench.scratch.label, budget),
                                        from_scratch(dataset, budget, seed, ft), dataset))
        for i, scenario in enumerate(bench.cross_domain):
            a, b = scenario.source, scenario.target
            sides = [{"source": a, "target": b}[side] for side in scenario.prune_data or []]
            sizes = {(d.height, d.width) for d in (data_config(bench, a), data_config(bench, b))}
            if sides and len(sizes) > 1:
                raise ConfigError(f"bench key cross_domain[{i}].prune_data: {a} and {b} have other input sizes "
                                  "(data.height, data.width); a model pruned with one and fine-tuned with the "
                                  "other needs one size (set input_size)")
            cell = trained(a, arch, seed)
            if cell.seed == seed:
                rows.append(RowSpec("cross_domain", cell.label, cell, b))
            # The dense reference: the source fine-tuned unpruned on the target, with each fine-tuning seed once.
            for ft in dict.fromkeys(ft for _, ft in rounds) if bench.dense or sides else ():
                cell = dense(a, b, seed, ft)
                rows.append(RowSpec("cross_domain", cell.label, cell, b))
            for budget, ft in rounds:
                for method in (m for m in bench.methods if m.label in scenario.methods):
                    # prune_data: each pruning data with each fine-tuning data, for a method whose pruning reads data.
                    on = sides if sides and reads_data(method, budget) else None
                    for finetune in (a, b):
                        for prune_on in on or [finetune]:
                            cell = pruned(a, finetune, method, budget, seed, ft, prune_on)
                            label = (f"{method.label} (pruned on {prune_on}, fine-tuned on {finetune})"
                                     if cell.prune_on else method.label)
                            rows.append(RowSpec("cross_domain", name(label, budget), cell, b))
    return Plan(list(cells.values()), rows, budgets, notes)


def check_plan(plan: Plan, *, verbose: bool = False, dry_run: bool = False) -> None:
    """Fail before any training: every dataset must parse, every method must accept its settings and reach its budget.

    The budget of each pruning cell is planned on a fresh model of the pruned architecture
    (the channel counts depend on the architecture, not on the trained weights), so an
    unreachable budget stops the bench now, not after the baselines have trained. A latency
    budget is checked on this machine's timings now; its cell checks it again when it prunes,
    on timings taken then, which :data:`LATENCY_NOTE` (added to ``plan.notes``) says.
    ``dry_run`` checks the dataset roots and file names only: it neither generates synthetic
    data nor decodes images.
    """
    datasets, seen_budgets = {}, set()
    for cell in plan.cells:
        data = json.dumps(dataclasses.asdict(cell.cfg.data), sort_keys=True)
        if data not in datasets:
            try:
                if not dry_run:
                    datasets[data] = prepare_dataset(cell.cfg.data, verbose=verbose)
                elif cell.cfg.data.dataset != "synthetic":  # generated data is written when the bench runs
                    datasets[data] = with_validation(parse_dataset(cell.cfg.data), cell.cfg.data)
                else:
                    datasets[data] = None
            except (OSError, ValueError) as exc:
                raise ConfigError(f"bench dataset {cell.dataset}: {exc}") from exc
        if cell.extra_steps and datasets[data] is not None:
            stretched(cell.cfg, cell.extra_steps, datasets[data], f"scratch on {cell.dataset}")
        if cell.kind == "prune":
            where = f"bench method {cell.label}"
            try:
                pruner = pruner_from_config(cell.cfg)
            except (ValueError, NotImplementedError) as exc:
                raise ConfigError(f"{where}: {exc}") from exc
            if pruner.requires == "training" and cell.cfg.prune.finetune_epochs < 1 and not cell.cfg.prune.train_steps:
                raise ConfigError(f"{where}: {cell.method.name} prunes during fine-tuning; "
                                  "set finetune_epochs (or its prune.finetune_epochs) to 1 or more")
            model_config = {**model_config_for(cell.cfg, 0), "pretrained": "none"}  # MACs do not count the classifier
            checked = {**model_config_for(cell.cfg, _start_classes(cell, datasets)), "pretrained": "none"}
            if source_of(cell) is not None:  # pruned from a checkpoint: its network (stem, classifier) as stored
                model_config, checked = networks(cell, _start_classes(cell, datasets))
            key = json.dumps([pruner.budget_params(), checked], sort_keys=True, default=str)
            if key not in seen_budgets:
                seen_budgets.add(key)
                try:  # on the network the cell's prune job checks: a latency table keys its timings by its description
                    pruner.check(Runtime.from_config(cell.cfg.train).compute.place(build_model(**checked)).eval())
                except ValueError as exc:
                    raise ConfigError(f"{where} at budget {cell.budget}: {exc}") from exc
            budget = cell.cfg.prune.train_steps
            own = pruner.planned_training_steps(build_model(**model_config)) if budget else None
            if own is not None and pruner.allocation.dynamic and own > 0.75 * budget:
                # The global plan is made again every round: it can take more rounds than planned.
                warnings.warn(f"{where}: its planned {own} own optimiser steps (at budget {cell.budget}) are more "
                              f"than 3/4 of train_steps={budget}, and its global allocation may take more rounds "
                              "than planned; if its cell stops on the budget, raise train_steps", UserWarning,
                              stacklevel=2)
            if own is not None and own > budget:
                raise ConfigError(f"bench key train_steps: {where} trains {own} optimiser steps by itself (between its "
                                  f"rounds or layers, as planned at budget {cell.budget}), more than train_steps="
                                  f"{budget}: raise train_steps, or lower the method's finetune_steps option")
    latency = [label for label in plan.budgets if label.startswith("latency:")]
    if latency and not any(note.startswith(LATENCY_NOTE) for note in plan.notes):
        plan.notes.append(f"{LATENCY_NOTE} ({', '.join(latency)}) {LATENCY_LATER}")


LATENCY_NOTE = "latency budgets"
LATENCY_LATER = (
    "were checked on this machine's timings now; each cell checks its budget again when it prunes, after its source "
    "trained, timing the whole network again then: if the load changed beyond the latency table's tolerance, the "
    "table is timed again and a budget near the lowest reachable fraction can still be refused then (the bench stops, "
    "naming the cell; finished cells are kept)")


def _start_classes(cell: Cell, datasets: dict[str, Any]) -> int:
    """Identities of the classifier of the model a pruned cell starts from (0 when unknown: a dry run on generated
    data): its source's, or, pruned or fine-tuned on other data than its source's, those of that data."""
    other = (cell.prune_on or cell.dataset) != cell.pretrain
    data = (cell.prune_data or cell.cfg.data) if other else cell.parent.cfg.data
    dataset = datasets.get(json.dumps(dataclasses.asdict(data), sort_keys=True))
    return dataset.num_train_pids if dataset is not None else 0
