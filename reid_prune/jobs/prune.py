"""The prune job: load a checkpoint, prune it with a method, fine-tune, report and save.

The output folder is checked first, and the target is checked on the loaded model before the
data is read (a latency target builds its table then), and files are written only at the end
(``pruned.pt`` atomically, ``widths.png``, then ``report.json``), so a bad rate, an unmeetable
budget, an unknown method or an unwritable ``--output`` leaves nothing behind and costs no pruning time.

Every report has ``achieved``: the MACs and parameter ratios and the latency ratio measured after
surgery against the unpruned model (interleaved, median of rounds), next to the target.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..analysis.widths import kept_widths, plot_widths
from ..checkpoint import (model_from_checkpoint, model_with_new_classifier, module_widths, read_checkpoint,
                          remove_stale_temporaries, replace_classifier, save_checkpoint)
from ..config import Config, DataConfig, TrainConfig
from ..distributed import barrier, is_main_process
from ..engine import Trainer, evaluate_with_config
from ..engine.finetune import StepFinetuner
from ..engine.ledger import TrainingLedger
from ..engine.tensorboard import open_log
from ..engine.trainer import batches_per_epoch
from ..evaluation.complexity import latency_ratios
from ..outputs import check_output_dir
from ..precision import ComputeSettings
from ..pruners import PruneContext, Pruner
from ..pruners.latency_feedback import check_latency_target
from ..runtime import Runtime
from .evaluate import check_architecture, model_report
from .teacher import build_distiller, check_distill
from .wiring import decision_loaders, make_eval_loaders, make_train_loader, prepare_dataset

STAGES = ("before", "pruned", "finetuned")
TARGET_KEYS = ("method", "scope", "rate", "layer_rates", "target_macs", "target_params", "target_latency")
RATIO_ROUNDS = 7  # interleaved passes of the unpruned and the pruned model per batch size


def pruner_from_config(cfg: Config, runtime: Runtime | None = None, *,
                       layer_rates: Mapping[str, float] | None = None) -> Pruner:
    """The configured method with its target, scope and guards; ``layer_rates`` replaces the configured target.

    A latency target is timed as ``eval`` measures: on the runtime's device, precision and memory
    format (default: resolved from ``cfg.train``), at ``prune.latency_batch_sizes`` (default
    ``eval.latency_batch_sizes``). See :meth:`Pruner.from_config <reid_prune.pruners.Pruner.from_config>`.
    """
    runtime = runtime or Runtime.from_config(cfg.train)
    return Pruner.from_config(cfg.prune, input_size=(cfg.data.height, cfg.data.width), compute=runtime.compute,
                              latency_batch_sizes=latency_batch_sizes(cfg), layer_rates=layer_rates)


def latency_batch_sizes(cfg: Config) -> tuple[int, ...]:
    """The batch sizes a latency target and the achieved latency ratio use: prune's, else eval's."""
    return tuple(cfg.prune.latency_batch_sizes or cfg.eval.latency_batch_sizes)


def achieved(cfg: Config, report: Mapping[str, Any], original: nn.Module, pruned: nn.Module,
             compute: ComputeSettings) -> dict[str, Any]:
    """What the pruned model keeps of the original: MACs and params ratios, and its measured latency ratio.

    The latency ratio is measured after surgery, the two models timed in turn (median of
    :data:`RATIO_ROUNDS` rounds per batch size), in the run's precision, memory format and
    ``prune.latency_threads``. It is left out (None) when ``eval.latency`` is false, except
    for a latency target, whose result it is.
    """
    before, after = report["before"], report["pruned"] or report["finetuned"]
    out: dict[str, Any] = {"macs_ratio": after["macs"] / before["macs"],
                           "params_ratio": after["params"] / before["params"],
                           "latency_ratio": None, "latency_ratio_mean": None, "latency_setting": None}
    if cfg.eval.latency or cfg.prune.target_latency is not None:
        threads = cfg.prune.latency_threads or 0
        ratios = latency_ratios(original, pruned, (cfg.data.height, cfg.data.width),
                                batch_sizes=latency_batch_sizes(cfg), compute=compute, threads=threads,
                                rounds=RATIO_ROUNDS)
        out.update(latency_ratio={k: round(v, 4) for k, v in ratios.items()},
                   latency_ratio_mean=round(sum(ratios.values()) / len(ratios), 4),
                   latency_setting={**compute.describe(), **({"threads": threads} if threads else {})})
        if cfg.prune.target_latency is not None:  # a miss beyond the tolerance warns and is marked in the report
            out.update(check_latency_target(cfg.prune.target_latency, ratios))
    return out


def finetune_schedule(cfg: Config, epochs: int) -> TrainConfig:
    """Fine-tuning schedule: cosine decay from prune.finetune_lr (default train.lr / 10), no warm-up."""
    lr = cfg.prune.finetune_lr if cfg.prune.finetune_lr is not None else cfg.train.lr / 10
    return dataclasses.replace(cfg.train, epochs=epochs, lr=lr, warmup_epochs=0, scheduler="cosine",
                               eval_every=max(epochs, 1))


def check_prune_data(cfg: Config, prune_data: DataConfig, pruner: Any, model: nn.Module) -> None:
    """Raise when pruning data other than ``cfg.data`` cannot serve ``pruner`` on ``model`` (see prune_checkpoint)."""
    where = f"prune_data ({prune_data.dataset} data)"
    if pruner.requires == "training":
        raise ValueError(f"{where}: pruning method {pruner.name!r} prunes during training, and that training is the "
                         "fine-tuning on the fine-tuning data: it has no pruning of its own to give other data to; "
                         "leave prune_data out")
    own_steps = getattr(pruner, "planned_training_steps", None)  # another library's pruner trains nothing itself
    if pruner.requires == "weights" and not (own_steps and own_steps(model)):
        raise ValueError(f"{where}: pruning method {pruner.name!r} reads no data while it prunes (its criterion "
                         "scores weights and it trains nothing between rounds or layers): prune_data would change "
                         "nothing; leave it out")
    if (prune_data.height, prune_data.width) != (cfg.data.height, cfg.data.width):
        raise ValueError(f"{where}: images of {prune_data.height}x{prune_data.width}, but the model is pruned and "
                         f"fine-tuned at {cfg.data.height}x{cfg.data.width} (data.height, data.width): give both "
                         "the same input size")


def prune_checkpoint(cfg: Config, checkpoint: str | Path, *, output: str | Path, progress: bool = True,
                     pruner: Any = None, prune_data: DataConfig | None = None) -> dict[str, Any]:
    """Prune ``checkpoint`` as ``cfg.prune`` says; write ``pruned.pt``, ``widths.png`` and ``report.json`` in ``output``.

    ``pruner``: cut with this object instead of the configured method, e.g. another library's
    pruner (the bench's Torch-Pruning anchors). It needs what this job uses of a
    :class:`~reid_prune.pruners.Pruner`: ``name``, ``requires`` (``weights`` or ``data``),
    ``prune(model, context)`` and ``summary()``; fine-tuning and the rest follow ``cfg``.

    With ``prune.train_steps`` every optimiser step after the source counts against that budget,
    the method's own (between rounds or layers, or the training it prunes in) included, and the
    fine-tuning takes exactly the rest; a method whose own training goes past it stops with an
    error (:class:`~reid_prune.engine.ledger.BudgetExceededError`).

    ``prune_data``: the data the method's pruning reads, when other than ``cfg.data`` (which stays the
    fine-tuning and evaluation data): its training split feeds the criterion's batches and the
    method's own training between its rounds or layers. With the identity loss the model gets a
    classifier over those identities first when the checkpoint's has another size, and, before the
    fine-tuning, a new one over ``cfg.data``'s when the pruning data's training images are others
    (seeded by ``train.seed``; the pruned network kept). Refused (ValueError) for a method that prunes
    during training (its pruning is the fine-tuning), for a weight criterion that trains nothing of its
    own (it reads no data: prune_data would change nothing), and for another input size. Equal to
    ``cfg.data`` (or None), the job is the one without it.

    Returns the report: for each stage (before, pruned, finetuned) mAP, rank-k, mINP,
    params, MACs, FLOPs and latency, plus the method, its target, the seconds spent,
    ``train_steps`` (optimiser steps after the source, all counted), ``mac_weighted_steps``
    (each step x the MACs fraction of the model that took it), ``finetune_steps`` (those after the cut),
    ``widths`` (per channel group: channels before, kept, fraction; see
    :func:`~reid_prune.analysis.widths.kept_widths`), ``widths_plot`` (whether
    ``widths.png`` was drawn: False without matplotlib), ``prune_data`` (the name of the pruning
    data's dataset; None without prune_data), ``validation`` (mAP, rank-1 and mINP of the finished
    model on the validation split, for choices between settings; None without ``data.val_ids``) and
    ``distill`` (the ``prune.distill`` settings; None without).
    """
    out = check_output_dir(output, "--output")
    if (out / "pruned.pt").exists():
        raise FileExistsError(f"{out / 'pruned.pt'} exists; choose another --output")
    # Checked before any work; step 0 holds the report, so the restart marker there replaces a failed try's logs.
    log = open_log(cfg.train.tensorboard, out, purge_step=0)
    runtime = Runtime.from_config(cfg.train)
    pruner = pruner or pruner_from_config(cfg, runtime)  # validates method, rates and options before any work
    epochs, budget = cfg.prune.finetune_epochs, cfg.prune.train_steps
    if pruner.requires == "training" and epochs < 1 and budget is None:
        raise ValueError(f"pruning method {pruner.name!r} prunes during training: give --finetune-epochs N (N >= 1) "
                         "or --train-steps N")
    ckpt = read_checkpoint(checkpoint)
    check_architecture(cfg, ckpt, checkpoint)
    model = model_from_checkpoint(ckpt)
    model.set_retrieval_feature(cfg.model.retrieval_feature)  # an evaluation choice: the config decides
    model_config = model.build_config
    original_widths = module_widths(model)
    compute = runtime.compute
    pruner.check(compute.place(model).eval())  # an unmeetable target stops here, before the data is read
    planned = getattr(pruner, "planned_training_steps", lambda _: None)(model) if budget is not None else None
    if planned is not None and planned > budget:
        raise ValueError(f"prune.train_steps={budget}: {pruner.name} plans {planned} optimiser steps of its own "
                         "(between its rounds or layers), more than the budget: raise --train-steps "
                         "(prune.train_steps), or lower the method's finetune_steps option")
    separate = prune_data is not None and prune_data != cfg.data
    own_steps = getattr(pruner, "planned_training_steps", lambda _: 0)(model)
    check_distill(cfg, trains=bool(epochs > 0 or budget or own_steps or pruner.requires == "training"),
                  other_data=separate)
    if separate:
        check_prune_data(cfg, prune_data, pruner, model)
    dataset = prepare_dataset(cfg.data, verbose=progress)
    # The data the pruning reads: its identities are those of the first classifier.
    prune_dataset = prepare_dataset(prune_data, verbose=progress) if separate else dataset
    classes = ckpt["model_config"].get("num_classes", 0)
    trains = epochs > 0 or budget or pruner.requires != "weights"
    if cfg.loss.id_weight > 0 and trains and classes != prune_dataset.num_train_pids:
        # Training on other identities than the model was trained on (another dataset): their classifier.
        split = "the pruning data's training split" if separate else "the training split"
        warnings.warn(f"the checkpoint's identity classifier has {classes} classes but {split} has "
                      f"{prune_dataset.num_train_pids} identities: {'pruning' if separate else 'fine-tuning'} "
                      "starts a new classifier for them", UserWarning, stacklevel=2)
        model = model_with_new_classifier(ckpt, prune_dataset.num_train_pids, cfg.train.seed)
        model.set_retrieval_feature(cfg.model.retrieval_feature)
        model_config = model.build_config
    query, gallery = make_eval_loaders(cfg, dataset)  # the reports' stages: scored, never read by a decision
    # What every decision reads (AFP+PRC's controller, fine-tuning's evaluation): the validation split if any.
    val_query, val_gallery = decision_loaders(cfg, dataset) if dataset.val_query else (query, gallery)
    train_loader = make_train_loader(cfg, dataset, runtime)
    prune_cfg = dataclasses.replace(cfg, data=prune_data) if separate else cfg
    prune_loader = make_train_loader(prune_cfg, prune_dataset, runtime) if separate else train_loader
    report: dict[str, Any] = {key: getattr(cfg.prune, key) for key in TARGET_KEYS}
    report["scope"] = pruner.scope  # auto resolved
    report.update(method=pruner.name, finetune_epochs=epochs, checkpoint=str(checkpoint),
                  prune_data=prune_dataset.name if prune_data is not None else None)
    report["before"] = model_report(model, cfg, query, gallery, runtime=runtime, progress=progress)
    # The teacher is the unpruned model as loaded (its own classifier), frozen before any cut.
    distiller = build_distiller(cfg, model_from_checkpoint(ckpt), student_classes=dataset.num_train_pids)
    report["distill"] = dataclasses.asdict(cfg.prune.distill) if cfg.prune.distill is not None else None
    ledger = TrainingLedger(report["before"]["macs"], (cfg.data.height, cfg.data.width), limit=budget)

    def schedule(steps: int | None) -> TrainConfig:
        """The fine-tuning schedule of ``steps`` optimiser steps (None: of prune.finetune_epochs epochs)."""
        if steps is None:
            return finetune_schedule(cfg, epochs)
        return finetune_schedule(cfg, math.ceil(steps / batches_per_epoch(train_loader, cfg.train)))

    def validate(net: nn.Module) -> dict[str, Any]:
        return evaluate_with_config(net, cfg, val_query, val_gallery, compute=compute, progress=False)

    # Between rounds the fine-tuning continues one stream of batches instead of restarting epoch 0.
    # The method's decisions and its own training read the pruning data (the fine-tuning data without prune_data).
    context = PruneContext(data=prune_loader, num_batches=cfg.prune.data_batches, device=compute.device,
                           finetune=StepFinetuner(prune_cfg, prune_loader, model_config, finetune_schedule(cfg, 1),
                                                  runtime=runtime, ledger=ledger, distiller=distiller),
                           evaluate=validate, precision=compute.precision)
    started = time.perf_counter()
    if pruner.requires == "training":
        pruner.context = context  # criteria that read data score on the training split
        # Soft and regularised methods run their schedule inside the fine-tuning epochs.
        # The ledger after the pruner: it measures the width after the pruner's cuts of each epoch.
        trainer = Trainer(cfg, model, model_config, train_loader, val_query, val_gallery, hooks=[pruner, ledger],
                          train=schedule(budget), progress=progress, runtime=runtime, steps=budget, distiller=distiller,
                          on_record=log.record if log else None)
        trainer.fit()
        # Surgery builds the kept layers anew, in NCHW: back to the configured memory format.
        model = compute.place(pruner.finalize(trainer.model))
        method_steps = ledger.steps  # it prunes while it trains: all of its training is its own
        report["prune_seconds"] = round(time.perf_counter() - started, 3)
        report["pruned"] = None  # pruned during fine-tuning: only the final state exists
        report["finetuned"] = model_report(model, cfg, query, gallery, runtime=runtime, progress=progress)
    else:
        # Criteria score the model as it runs (placed); place it again after, whatever surgery built.
        model = compute.place(pruner.prune(compute.place(model).eval(), context))
        report["prune_seconds"] = round(time.perf_counter() - started, 3)
        method_steps = ledger.steps  # between its rounds or layers
        report["pruned"] = model_report(model, cfg, query, gallery, runtime=runtime, progress=progress)
        rest = None if budget is None else ledger.left  # the budget's steps the method did not take itself
        if epochs > 0 or rest:
            if separate and cfg.loss.id_weight > 0 and (prune_dataset.train != dataset.train
                                                        or model.classifier.out_features != dataset.num_train_pids):
                # Pruned with other people's images: the fine-tuning's identities get a classifier of their own.
                model = replace_classifier(model, dataset.num_train_pids, cfg.train.seed)
                model_config = model.build_config
            trainer = Trainer(cfg, model, model_config, train_loader, val_query, val_gallery, hooks=[ledger],
                              train=schedule(rest), progress=progress, runtime=runtime, steps=rest,
                              distiller=distiller, on_record=log.record if log else None)
            trainer.fit()
            model = trainer.model
            report["finetuned"] = model_report(model, cfg, query, gallery, runtime=runtime, progress=progress)
        else:
            report["finetuned"] = None
    # The finished model on the validation split: what a choice between settings may read (the test split may not).
    report["validation"] = ({k: v for k, v in validate(model).items() if k in ("mAP", "rank1", "mINP")}
                            if dataset.val_query else None)
    report.update(pruner.summary())
    report.update(ledger.summary(), method_train_steps=method_steps, finetune_steps=ledger.steps - method_steps)
    report["total_seconds"] = round(time.perf_counter() - started, 3)
    if is_main_process():
        unpruned = model_from_checkpoint(ckpt)
        unpruned.set_retrieval_feature(cfg.model.retrieval_feature)
        report["achieved"] = achieved(cfg, report, unpruned, model, compute)
    if is_main_process():
        remove_stale_temporaries(out / "pruned.pt")  # left by a kill during an earlier write
        report["widths"] = kept_widths(model, original_widths)
        for key, value in report.items():  # strict JSON (NaN is no JSON), checked before the first file is written
            try:
                json.dumps(value, allow_nan=False)
            except ValueError:
                raise ValueError(f"report.json: {key!r} holds a non-finite number (NaN or infinity), which JSON "
                                 "cannot hold; nothing was written") from None
        save_checkpoint(out / "pruned.pt", model, model_config, config=cfg.to_dict(),
                        prune={k: report[k] for k in TARGET_KEYS})
        report["widths_plot"] = plot_widths(report["widths"], out / "widths.png",
                                            title=f"{pruner.name} ({pruner.scope}): kept channels per group")
        (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    if log:
        log.prune_report(report)
        log.close()
    barrier()
    return report
