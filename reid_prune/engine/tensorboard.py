"""TensorBoard logs of training and pruning runs: ``train.tensorboard`` (``--tensorboard DIR``), the ``tensorboard`` extra.

``train.tensorboard: true`` writes to ``OUTPUT/tensorboard`` (the run's or the prune job's output
folder); a string is the folder itself (relative to the working directory, like ``output``);
``false`` (the default) writes nothing. What is written, one scalar per tag and step:

- every epoch of training or fine-tuning, at step = the epoch (counted from 1, as in
  ``metrics.jsonl``): ``train/<term>`` for each loss term of the epoch's record (``loss``,
  ``triplet``, ``id``, and ``reg`` or the distillation terms when they exist), ``train/lr`` (the
  epoch's last learning rate), ``train/seconds``, and ``eval/<metric>`` (``mAP``, ``rank1``,
  ``rank5``, ``rank10``, ``mINP``) in the epochs that evaluated; the values are those of
  ``metrics.jsonl``, stored as float32 as TensorBoard stores every scalar;
- a train run with a validation split: ``test/<metric>``, the finished model's one test score,
  at the last epoch;
- a prune run, at step 0: ``prune/<stage>/<key>`` for every number of ``report.json``'s
  ``before``, ``pruned``, ``finetuned``, ``validation`` and ``achieved`` (``latency_ms`` per batch
  size as ``prune/before/latency_ms/batch32``; ``latency_setting``, a description, left out), and ``widths/kept/<group>`` and
  ``widths/fraction/<group>`` from its ``widths``.

**Resume.** Steps are epochs, so a resumed run writes the same steps the stopped one would
have. The writer is opened at the first step this process writes, with that step as
``purge_step``: its event file starts with a restart marker, and TensorBoard's reader drops
every event of the folder's older files at that step or later. An epoch that was logged
but whose checkpoint a kill cut short is written again once, not twice, and a new run in a
folder a stopped run left logs in replaces them. The files themselves are never deleted.

Only rank 0 logs under torchrun (:func:`open_log` gives the other ranks None).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..distributed import is_main_process
from ..outputs import check_output_dir
from .trainer import RECORD_METRICS

SETTING = "train.tensorboard"
INSTALL = "pip install -e '.[tensorboard]' in this repository, or bash scripts/setup.sh tensorboard"
# The report.json sections whose numbers a prune run logs.
PRUNE_SECTIONS = ("before", "pruned", "finetuned", "validation", "achieved")


class MissingTensorBoardError(ImportError, ValueError):
    """The tensorboard package is not installed; the message says how to install it.

    An ImportError for library callers; also a ValueError so the command line reports it
    in one line with exit code 2, like any setting it cannot honour.
    """


def summary_writer_class() -> type:
    """``torch.utils.tensorboard.SummaryWriter``, imported on demand.

    Raises:
        MissingTensorBoardError: the tensorboard package is missing, with the command that installs it.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingTensorBoardError(f"{SETTING} (--tensorboard) needs the tensorboard package, which is not "
                                      f"installed: {INSTALL}; or train without it (--set {SETTING}=false)") from None
    return SummaryWriter


def tensorboard_dir(setting: bool | str, output: str | Path) -> Path | None:
    """The log folder ``setting`` (``train.tensorboard``) names: None for false, ``output/tensorboard`` for true.

    Raises:
        ValueError: an empty string (neither a folder nor a switch).
    """
    if setting is False:
        return None
    if setting is True:
        return Path(output) / "tensorboard"
    if not str(setting).strip():
        raise ValueError(f"config key {SETTING}: an empty folder name; give a folder, true (OUTPUT/tensorboard) "
                         "or false")
    return Path(setting)


def open_log(setting: bool | str, output: str | Path, *, purge_step: int | None = None) -> TensorBoardLog | None:
    """Check ``setting`` before any work and return the log to write (None: logging is off, or not rank 0).

    Every rank checks the package and the folder, so all stop together; nothing is written
    until the first scalar. ``purge_step``: see :class:`TensorBoardLog`.

    Raises:
        MissingTensorBoardError: logging is on and the tensorboard package is missing.
        ValueError: the folder cannot be written (a file of that name, no permission) or is an empty string.
    """
    folder = tensorboard_dir(setting, output)
    if folder is None:
        return None
    writer_class = summary_writer_class()
    check_output_dir(folder, f"{SETTING} (--tensorboard)")
    return TensorBoardLog(folder, purge_step=purge_step, writer_class=writer_class) if is_main_process() else None


def _numbers(values: Mapping[str, Any], prefix: str) -> Iterable[tuple[str, float]]:
    """(tag, value) for every number of ``values``, nested mappings as ``prefix/key/inner``; booleans skipped."""
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _numbers(value, f"{prefix}/{key}")
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            yield f"{prefix}/{key}", float(value)


class TensorBoardLog:
    """Scalars of one run in one TensorBoard folder; the event file is opened at the first scalar.

    Args:
        folder: the log folder (created when the first scalar is written).
        purge_step: the restart marker's step (see the module's "Resume"); None: the first step written.
        writer_class: ``SummaryWriter`` (:func:`summary_writer_class`).
    """

    def __init__(self, folder: str | Path, *, purge_step: int | None = None, writer_class: type | None = None) -> None:
        self.folder = Path(folder)
        self.purge_step = purge_step
        self._writer_class = writer_class or summary_writer_class()
        self._writer: Any = None

    def scalars(self, values: Iterable[tuple[str, float]], step: int) -> None:
        """Write each (tag, value) at ``step`` and flush, so a killed run keeps what it logged."""
        values = list(values)
        if not values:
            return
        if self._writer is None:
            purge = step if self.purge_step is None else self.purge_step
            self._writer = self._writer_class(log_dir=str(self.folder), purge_step=purge)
        for tag, value in values:
            self._writer.add_scalar(tag, value, global_step=step)
        self._writer.flush()

    def record(self, record: Mapping[str, Any]) -> None:
        """An epoch's record (the trainer's ``metrics.jsonl`` line) at step ``record["epoch"]``.

        Loss terms, ``lr`` and ``seconds`` go under ``train/``, rank metrics under ``eval/``.
        """
        stats = {k: v for k, v in record.items() if k not in RECORD_METRICS and k != "epoch"}
        metrics = {k: v for k, v in record.items() if k in RECORD_METRICS}
        self.scalars([*_numbers(stats, "train"), *_numbers(metrics, "eval")], int(record["epoch"]))

    def metrics(self, group: str, values: Mapping[str, Any], step: int) -> None:
        """The rank metrics of ``values`` (an evaluation's result) as ``group/<metric>`` at ``step``."""
        self.scalars(_numbers({k: values[k] for k in RECORD_METRICS if k in values}, group), step)

    def prune_report(self, report: Mapping[str, Any]) -> None:
        """The stages, ratios and kept widths of a prune job's report (see the module docstring), at step 0."""
        values = [pair for section in PRUNE_SECTIONS if report.get(section)
                  for pair in _numbers({k: v for k, v in report[section].items() if k != "latency_setting"},
                                       f"prune/{section}")]
        for row in report.get("widths") or ():
            values += [(f"widths/kept/{row['group']}", float(row["kept"])),
                       (f"widths/fraction/{row['group']}", float(row["fraction"]))]
        self.scalars(values, 0)

    def close(self) -> None:
        """Flush and close the event file (nothing to do when nothing was written)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
