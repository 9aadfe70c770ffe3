"""The training loop: losses, optimiser, schedule, mixed precision, hooks, evaluation, checkpoints, resume.

The loop is written for one process *or* one rank of a torchrun job: it asks
``torch.distributed`` for its rank, wraps the model in DistributedDataParallel
when the world is larger than one (gradients are averaged over the ranks), and
lets only rank 0 write files, show progress bars and evaluate; the other ranks
wait for rank 0's metrics, so every rank keeps the same record of the run. See
docs/multi_gpu.md. Everything random is reseeded from ``train.seed + epoch`` at
the start of each epoch, and each image's augmentation from its own seed (see
:class:`~reid_prune.data.loaders.SeededBatches`), so a run resumed from ``last.pt``
repeats the remaining epochs exactly as an uninterrupted run would (on CPU), for
any number of loader workers.

Training stops at the first non-finite loss (:class:`NonFiniteError`) before the
optimiser takes the step, so ``last.pt`` keeps the last finite weights. Epochs are
counted from 1 in ``metrics.jsonl`` and checkpoints (``epoch``: epochs completed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import read_checkpoint, save_checkpoint, unwrap
from ..config import Config, TrainConfig
from ..distillation import Distiller
from ..distributed import (all_reduce_mean, average_gradients, broadcast_buffers, broadcast_object,
                           broadcast_tensors)
from ..evaluation import evaluate
from ..hooks import TrainerHook
from ..losses import ReIDLoss
from ..precision import ComputeSettings
from ..progress import progress_bar
from ..runtime import Runtime, seed_everything
from .optim import build_optimizer, shared_copy
from .schedule import lr_at


# The rank metrics an epoch's record (a metrics.jsonl line) holds when it evaluated.
RECORD_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")


class NonFiniteError(ValueError):
    """The loss or the weights became NaN or infinite; the message says where and what to change."""


def evaluate_with_config(model: nn.Module, cfg: Config, query_loader: DataLoader, gallery_loader: DataLoader, *,
                         compute: ComputeSettings, progress: bool = True) -> dict[str, Any]:
    """Rank metrics of ``model`` with the config's distance, flip and AP convention, run as ``compute`` says.

    ``compute``: the job's resolved device, precision and memory format (``Runtime.compute``).
    ``model`` is moved to the device in that memory format first (in place), so a model fresh
    from a checkpoint or from pruning surgery is evaluated as it will be trained.
    """
    e = cfg.eval
    device = compute.device
    return evaluate(compute.place(model), query_loader, gallery_loader, device=device, metric=e.metric, flip=e.flip,
                    ap=e.ap, precision=compute.precision, channels_last=compute.channels_last, progress=progress)


def batches_per_epoch(loader: DataLoader, train: TrainConfig) -> int:
    """Optimiser steps in one full epoch: the loader's batches, at most ``train.max_batches`` (when above 0)."""
    return min(len(loader), train.max_batches) if train.max_batches > 0 else len(loader)


class Trainer:
    """Train a re-ID model for ``train.epochs`` epochs.

    Args:
        cfg: the full run configuration (stored in checkpoints).
        model: the network; ``model(x, with_logits=True)`` must give (features, logits).
        model_config: the build_model keyword arguments that recreate ``model``'s architecture.
        train_loader: yields (images (B, 3, H, W), pids (B,), camids (B,), indices (B,)) in P x K batches;
            its ``batch_sampler`` must have ``set_epoch``.
        query_loader, gallery_loader: evaluation loaders; without them, no evaluation is run.
        output_dir: run folder (config.yaml, last.pt, best.pt, metrics.jsonl); None writes nothing.
        hooks: pruners or other :class:`TrainerHook` objects.
        train: the schedule to follow; defaults to ``cfg.train`` (fine-tuning passes its own).
        steps: train exactly this many optimiser steps, not ``train.epochs`` epochs: as many epochs as they
            need, the last one cut short; the schedule (cosine, milestones) runs over ``steps`` / batches
            per epoch epochs. An equal training budget counts steps (reid-prune prune, ``prune.train_steps``).
        runtime: device, precision, ranks (:class:`~reid_prune.runtime.Runtime`); default: resolved from ``train``.
        distiller: adds its distillation loss to every step (:class:`~reid_prune.distillation.Distiller`);
            its projection, if any, trains with the model and is saved in ``last.pt`` for ``--resume``.
        on_record: called on rank 0 with each epoch's record (the metrics.jsonl line), before it is saved.
    """

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        model_config: dict[str, Any],
        train_loader: DataLoader,
        query_loader: DataLoader | None = None,
        gallery_loader: DataLoader | None = None,
        *,
        output_dir: str | Path | None = None,
        hooks: Sequence[TrainerHook] = (),
        train: TrainConfig | None = None,
        progress: bool = True,
        runtime: Runtime | None = None,
        steps: int | None = None,
        distiller: Distiller | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.train_cfg = train or cfg.train
        self.steps = steps
        if steps is not None:
            if steps < 1:
                raise ValueError(f"steps: expected 1 or more optimiser steps, got {steps}")
            epochs = math.ceil(steps / batches_per_epoch(train_loader, self.train_cfg))
            self.train_cfg = dataclasses.replace(self.train_cfg, epochs=epochs)
        self.model_config = model_config
        self.runtime = runtime or Runtime.from_config(self.train_cfg)
        self.device, self.compute = self.runtime.device, self.runtime.compute
        self.rank, self.world_size, self.is_main = self.runtime.rank, self.runtime.world_size, self.runtime.is_main
        if self.train_cfg.sync_bn and self.world_size > 1 and self.device.type != "cuda":
            raise ValueError("config key train.sync_bn: torch's SyncBatchNorm runs on GPUs only; "
                             "set train.sync_bn=false to train on CPUs (BatchNorm statistics are then per rank)")
        self.model = self.compute.place(model)
        self.distiller, self.on_record = distiller, on_record
        if distiller is not None:
            distiller.place(self.compute)
        neck = getattr(unwrap(self.model), "neck", None)
        if self.train_cfg.train_neck_bias and isinstance(neck, nn.BatchNorm1d):
            neck.bias.requires_grad_(True)  # the model is built with it frozen (bag of tricks)
        self.train_loader, self.query_loader, self.gallery_loader = train_loader, query_loader, gallery_loader
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.hooks = list(hooks)
        self.progress = progress and self.is_main
        self.criterion = ReIDLoss(
            triplet=cfg.loss.triplet, margin=cfg.loss.margin, soft_margin=cfg.loss.soft_margin,
            metric=cfg.loss.metric, triplet_weight=cfg.loss.triplet_weight, id_weight=cfg.loss.id_weight,
            label_smoothing=cfg.loss.label_smoothing,
        )
        self.start_epoch = 0
        self.epoch = 0
        self.batch = 0  # within the epoch
        self.global_step = 0
        self.best: dict[str, Any] = {"mAP": -1.0, "epoch": 0}  # epoch 0: none evaluated yet
        self.last_metrics: dict[str, Any] = {}
        self.loop = _Loop(self)
        self.rebuild_optimizer()

    # ------------------------------------------------------------------ state

    def rebuild_optimizer(self) -> None:
        """Create the optimiser and (for DDP) the wrapper anew; needed after surgery replaces parameters.

        Surgery builds its new layers in NCHW, so the model is first put back on the device in
        the configured memory format.
        """
        self.compute.place(self.model)
        extra = ()
        if self.distiller is not None:
            self.distiller.match_student(unwrap(self.model))  # surgery may have changed the feature size
            broadcast_tensors(self.distiller.parameters())  # rank 0's projection everywhere, as DDP does the model
            extra = self.distiller.parameters()
        self.optimizer = build_optimizer(self.model, self.train_cfg, self.train_cfg.lr, extra)
        # Loss scaling only for fp16, whose range underflows small gradients; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.compute.precision == "fp16")
        if self.world_size > 1:
            net = unwrap(self.model)
            if self.train_cfg.sync_bn:
                net = nn.SyncBatchNorm.convert_sync_batchnorm(shared_copy(net))
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model: nn.Module = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        else:
            self.train_model = self.model

    def checkpoint_extra(self, *, resumable: bool = True) -> dict[str, Any]:
        """Checkpoint entries besides the model; the optimiser and scaler state only when ``resumable``."""
        extra = {
            "epoch": self.epoch + 1,
            "global_step": self.global_step,
            "best": dict(self.best),
            "metrics": dict(self.last_metrics),
            "hooks": [hook.state_dict() for hook in self.hooks],
            "config": self.cfg.to_dict(),
            # What train.amp and train.channels_last resolved to here: a resume must run the same way.
            "compute": {"precision": self.compute.precision, "memory_format": self.compute.memory_format_name},
        }
        if self.distiller is not None:
            extra["distill"] = self.distiller.extra_state_dict()
        if resumable:
            extra.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict())
        return extra

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``last.pt`` of the output folder (or ``path``)."""
        if path is None:
            if self.output_dir is None:
                raise ValueError("resume needs an output folder holding last.pt")
            path = self.output_dir / "last.pt"
        ckpt = read_checkpoint(path)
        unwrap(self.model).load_state_dict(ckpt["state_dict"])
        if self.distiller is not None:
            self.distiller.load_extra_state_dict(ckpt.get("distill", {}))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"] and self.scaler.is_enabled():
            # A run continued at another precision starts a fresh scale (a disabled scaler saves nothing).
            self.scaler.load_state_dict(ckpt["scaler"])
        for hook, state in zip(self.hooks, ckpt.get("hooks", [])):
            hook.load_state_dict(state)
        self.start_epoch = self.epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt["global_step"])
        self.best = dict(ckpt["best"])
        self.last_metrics = dict(ckpt.get("metrics", {}))

    def _truncate_metrics(self, done: int) -> None:
        """Drop metric lines of epochs after ``done``: a resumed run repeats them, a new run starts the file afresh."""
        path = self.output_dir / "metrics.jsonl"
        if path.exists():
            lines = path.read_text().splitlines() if done > 0 else []
            kept = [line for line in lines if line and json.loads(line)["epoch"] <= done]
            path.write_text("".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs. Returns {"best": {...}, "last": {...}}."""
        epochs = self.train_cfg.epochs
        if self.output_dir is not None and self.is_main:
            self._truncate_metrics(self.start_epoch)
        for hook in self.hooks:
            hook.on_train_start(self.loop)
        for epoch in range(self.start_epoch, epochs):
            self.epoch = epoch
            started = time.perf_counter()
            train_stats = self.train_epoch(epoch)
            for hook in self.hooks:
                hook.on_epoch_end(self.loop, epoch)
            self._check_weights()
            record: dict[str, Any] = {"epoch": epoch + 1, **train_stats}
            if self.query_loader is not None and ((epoch + 1) % self.train_cfg.eval_every == 0 or epoch + 1 == epochs):
                metrics = self.evaluate()
                record.update({k: metrics[k] for k in RECORD_METRICS})
            record["seconds"] = round(time.perf_counter() - started, 3)
            self.last_metrics = record
            if self.on_record is not None and self.is_main:  # before the checkpoint: a resume logs it again
                self.on_record(record)
            self._save(record)
        return {"best": dict(self.best), "last": dict(self.last_metrics)}

    def _check_weights(self) -> None:
        """Stop on a non-finite weight or running statistic (a finite loss can come with an overflowing step)."""
        bad = [name for name, t in unwrap(self.model).state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise NonFiniteError(self._stopped(f"the weights became non-finite in epoch {self.epoch + 1} ({bad[0]}"
                                               f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''})"))

    def _save(self, record: dict[str, Any]) -> None:
        improved = "mAP" in record and record["mAP"] > self.best["mAP"]
        if improved:
            self.best = {"mAP": record["mAP"], "rank1": record["rank1"], "epoch": record["epoch"]}
        if self.output_dir is None or not self.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")  # strict JSON: NaN is not valid
        save_checkpoint(self.output_dir / "last.pt", self.model, self.model_config, **self.checkpoint_extra())
        if improved or self.query_loader is None:
            # best.pt is for evaluation and pruning: the optimiser state would double its size for nothing.
            save_checkpoint(self.output_dir / "best.pt", self.model, self.model_config,
                            **self.checkpoint_extra(resumable=False))

    def _stopped(self, what: str) -> str:
        """The message of a NonFiniteError: what happened, what was kept, what to change."""
        kept = ""
        if self.output_dir is not None:
            kept = (f"; last.pt keeps the weights of epoch {self.epoch} (the last finite ones)" if self.epoch > 0
                    else "; no checkpoint was written")
        return (f"{what}, so training stopped{kept}. Lower the learning rate (train.lr, or prune.finetune_lr "
                f"when fine-tuning; it was {self.train_cfg.lr:g}) or lengthen the warm-up (train.warmup_epochs), "
                "and train into a new --output (a resume keeps the run's own learning rate)")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the P x K loader. Returns the loss parts (mean over batches and ranks) and the last lr."""
        seed_everything(self.train_cfg.seed + epoch)
        self.train_loader.batch_sampler.set_epoch(epoch)
        self.model.train()
        self.train_model.train()  # its own module tree under SyncBatchNorm (see shared_copy)
        per_epoch = num_batches = batches_per_epoch(self.train_loader, self.train_cfg)
        # With a step budget the schedule spans steps / per_epoch epochs and the last epoch stops early.
        length = None if self.steps is None else self.steps / per_epoch
        if self.steps is not None:
            num_batches = min(num_batches, self.steps - self.global_step)
        totals: dict[str, float] = {}
        bar = progress_bar(total=num_batches, desc=f"epoch {epoch + 1}/{self.train_cfg.epochs}",  # in a log: a line
                           disable=not self.progress, leave=False, final_line=True, dynamic_ncols=True)  # per epoch
        lr = 0.0
        for step, (images, pids, _, _) in enumerate(self.train_loader):
            if step >= num_batches:
                break
            self.batch = step
            lr = lr_at(self.train_cfg, epoch + step / per_epoch, epochs=length)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            parts = self.train_step(images, pids)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{lr:.2e}")
            bar.update()
        bar.close()
        broadcast_buffers(self.model)  # every rank ends the epoch with rank 0's model, running statistics included
        stats = all_reduce_mean({key: value / max(num_batches, 1) for key, value in totals.items()})
        stats["lr"] = lr
        return stats

    def train_step(self, images: torch.Tensor, pids: torch.Tensor) -> dict[str, float]:
        """Forward, loss (+ hook regularisers), backward, hooks, optimiser step."""
        images = self.compute.inputs(images)
        pids = pids.to(self.device, non_blocking=True)
        with self.compute.autocast():
            feats, logits = self.train_model(images, with_logits=True)
            loss, parts = self.criterion(feats.float(), None if logits is None else logits.float(), pids)
            for hook in self.hooks:
                reg = hook.regularization_loss(unwrap(self.model))
                if reg is not None:
                    loss = loss + reg
                    parts["reg"] = parts.get("reg", 0.0) + float(reg.detach())
            if self.distiller is not None:  # the re-ID losses stay on: distillation adds to them
                distilled, distill_parts = self.distiller.loss(images, feats, logits)
                loss = loss + distilled
                parts.update(distill_parts)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        value = float(loss.detach())
        # Every rank must stop together: agree on whether any rank's loss is non-finite.
        if all_reduce_mean({"finite": float(math.isfinite(value))})["finite"] < 1.0:
            where = "" if not math.isfinite(value) else " on another rank"
            raise NonFiniteError(self._stopped(
                f"the loss became {value if where == '' else 'non-finite'}{where} at epoch {self.epoch + 1}, batch "
                f"{self.batch + 1} (optimiser step {self.global_step + 1}, learning rate "
                f"{self.optimizer.param_groups[0]['lr']:.3g})"))
        self.scaler.unscale_(self.optimizer)
        if self.distiller is not None and self.world_size > 1:
            average_gradients(self.distiller.parameters())  # outside DDP's module: averaged here
        for hook in self.hooks:
            hook.on_after_backward(self.loop)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for hook in self.hooks:
            hook.on_batch_end(self.loop)
        self.global_step += 1
        parts["loss"] = value
        return parts

    def evaluate(self, query_loader: DataLoader | None = None,
                 gallery_loader: DataLoader | None = None) -> dict[str, Any]:
        """Rank metrics of the current model on the trainer's query/gallery loaders (or the ones given).

        Under DDP rank 0 evaluates alone (the weights are the same on every rank) and
        the others wait for its metrics, which they receive.
        """
        metrics = None
        if self.is_main:
            metrics = evaluate_with_config(unwrap(self.model), self.cfg, query_loader or self.query_loader,
                                           gallery_loader or self.gallery_loader, compute=self.compute,
                                           progress=self.progress)
        return broadcast_object(metrics)


class _Loop:
    """The :class:`~reid_prune.hooks.TrainingLoop` view of a Trainer: all that hooks may use of it."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def epochs(self) -> int:
        return self._trainer.train_cfg.epochs

    @property
    def can_evaluate(self) -> bool:
        return self._trainer.query_loader is not None

    def evaluate(self) -> dict[str, Any]:
        return self._trainer.evaluate()

    def rebuild_optimizer(self) -> None:
        self._trainer.rebuild_optimizer()
