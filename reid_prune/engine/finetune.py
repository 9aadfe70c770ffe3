"""Short fine-tuning between pruning rounds, on one continuing stream of training batches.

Iterative and layer-wise pruning fine-tune a few steps after each round. Each call must
continue where the previous one stopped: restarting the loader every time would train
every round on the same first batches of epoch 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, TrainConfig
from ..distillation import Distiller
from ..runtime import Runtime, seed_everything
from .ledger import TrainingLedger
from .trainer import Trainer


class BatchStream:
    """Batches of a P x K loader, epoch after epoch, handed out a few at a time.

    Each epoch starts as the trainer starts one: everything random is seeded from
    ``seed + epoch`` and the sampler is told the epoch, so the stream is the same batches
    an uninterrupted run of epochs 0, 1, ... would see.
    """

    def __init__(self, loader: DataLoader, seed: int) -> None:
        self.loader, self.seed = loader, seed
        self.epoch = -1
        self.iterator: Iterator | None = None

    def _new_epoch(self) -> None:
        self.epoch += 1
        seed_everything(self.seed + self.epoch)
        self.loader.batch_sampler.set_epoch(self.epoch)
        self.iterator = iter(self.loader)

    def take(self, count: int) -> Iterator[Any]:
        """The next ``count`` batches, starting a new epoch whenever one runs out."""
        if self.iterator is None:
            self._new_epoch()
        for _ in range(count):
            try:
                batch = next(self.iterator)
            except StopIteration:
                self._new_epoch()
                batch = next(self.iterator)
            yield batch


class StepFinetuner:
    """``finetune(model, steps)`` for :class:`~reid_prune.pruners.PruneContext`: train ``steps`` steps, continuing.

    Args:
        cfg: the run configuration (losses, device, AMP).
        loader: the P x K training loader.
        model_config: build_model arguments of the model being pruned (stored in checkpoints).
        schedule: the fine-tuning schedule; its ``lr`` is used as a constant for these short runs.
        runtime: the job's device, precision and ranks (default: resolved from ``schedule``).
        ledger: counts the steps (and stops them past its limit: the job's ``prune.train_steps``).
        distiller: distillation from the unpruned model during these steps too (``prune.distill``).

    A new optimiser is made at every call, since surgery replaced the parameters.
    """

    def __init__(self, cfg: Config, loader: DataLoader, model_config: dict[str, Any], schedule: TrainConfig, *,
                 runtime: Runtime | None = None, ledger: TrainingLedger | None = None,
                 distiller: Distiller | None = None) -> None:
        self.cfg, self.model_config, self.schedule, self.ledger = cfg, model_config, schedule, ledger
        self.distiller = distiller
        self.runtime = runtime or Runtime.from_config(schedule)
        self.stream = BatchStream(loader, schedule.seed)
        self.loader = loader
        self.steps_done = 0

    def __call__(self, model: nn.Module, steps: int) -> nn.Module:
        if self.ledger is not None:
            self.ledger.spend(model, steps, who=f"pruning method {self.cfg.prune.method!r}")
        trainer = Trainer(self.cfg, model, self.model_config, self.loader, train=self.schedule, progress=False,
                          runtime=self.runtime, distiller=self.distiller)
        trainer.model.train()
        trainer.train_model.train()
        for group in trainer.optimizer.param_groups:
            group["lr"] = self.schedule.lr
        for images, pids, *_ in self.stream.take(steps):
            trainer.train_step(images, pids)
        self.steps_done += steps
        return trainer.model
