"""Progress in a log: whole lines (one per interval, one per epoch), never tqdm's carriage-return redraws."""

from __future__ import annotations

import io
import re

import pytest
from tqdm import tqdm

from conftest import TINY_RUN
from reid_prune.config import load_config
from reid_prune.jobs.train import train
from reid_prune.progress import LineProgress, duration, progress_bar


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_tqdm_and_a_file_or_pipe_gets_lines():
    assert isinstance(progress_bar(range(3), stream=Terminal()), tqdm)
    assert isinstance(progress_bar(range(3), stream=io.StringIO()), LineProgress)
    # Disabled, it stays tqdm's no-op whatever the stream.
    assert isinstance(progress_bar(range(3), disable=True, stream=io.StringIO()), tqdm)


def test_lines_come_once_per_interval_and_at_the_end():
    clock, out = Clock(), io.StringIO()
    bar = LineProgress(total=10, desc="epoch 1/2", interval=30, final_line=True, stream=out, clock=clock)
    for step in range(10):
        clock.now += 7  # 7 s per batch: 30 s pass after the 5th batch (35 s), and 35 s later after the 10th
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        bar.update()
    assert out.getvalue().splitlines() == ["epoch 1/2: 5/10 (50%), 35 s, loss=0.200",
                                           "epoch 1/2: 10/10 (100%), 1 min 10 s, loss=0.100"]
    clock.now += 2
    bar.close()
    bar.close()  # twice: one summary line
    assert out.getvalue().splitlines()[2:] == ["epoch 1/2: 10/10 (100%) done in 1 min 12 s, loss=0.100"]


def test_a_short_loop_without_final_line_prints_nothing_and_iteration_counts_items():
    clock, out = Clock(), io.StringIO()
    items = list(LineProgress(["a", "b", "c"], desc="features", stream=out, clock=clock))
    assert items == ["a", "b", "c"] and out.getvalue() == ""
    bar = LineProgress(iter(range(4)), desc="features", interval=1, stream=out, clock=clock)  # no len: a bare count
    for _ in bar:
        clock.now += 0.6
    # Lines after the 2nd item (1.2 s) and the 4th (2.4 s, 1.2 s after the last line); the series ends with one.
    assert out.getvalue().splitlines() == ["features: 2, 1.2 s", "features: 4, 2.4 s", "features: 4 done in 2.4 s"]


@pytest.mark.parametrize("seconds, text", [(4.25, "4.2 s"), (31.4, "31 s"), (124, "2 min 4 s"), (3790, "1 h 3 min")])
def test_durations_read_as_a_person_would_write_them(seconds, text):
    assert duration(seconds) == text


@pytest.mark.usefixtures("session_cache")
def test_training_into_a_log_writes_one_line_per_epoch_and_no_carriage_return(tmp_path, capsys):
    # capsys's stderr is no terminal, as a log file or a pipe: the bars must come out as lines.
    cfg = load_config(None, TINY_RUN + ["train.epochs=2", "train.warmup_epochs=0", "train.max_batches=2",
                                        "train.eval_every=1", "eval.latency=false"])
    train(cfg, output=tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [re.sub(r" done in .*", "", line) for line in epochs] == ["epoch 1/2: 2/2 (100%)", "epoch 2/2: 2/2 (100%)"]
    assert all(re.search(r"done in [\d.]+ s, loss=\d+\.\d{3}, lr=", line) for line in epochs)
