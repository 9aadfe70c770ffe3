"""Training engine: the loop, its hooks, schedules, and the train/evaluate jobs."""

from .hooks import TrainerHook
from .run import evaluate_checkpoint, model_report, prepare_dataset, train
from .trainer import Trainer, resolve_device

__all__ = ["Trainer", "TrainerHook", "evaluate_checkpoint", "model_report", "prepare_dataset", "resolve_device", "train"]
