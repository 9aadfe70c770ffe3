"""A non-finite loss stops training at once: exit 2 with the epoch, the batch and a hint; last.pt stays finite."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.jobs.train import train
from reid_prune.losses import ReIDLoss

TINY = TINY_RUN + ["train.warmup_epochs=0", "train.eval_every=1", "eval.latency=false"]
REPO = Path(__file__).resolve().parents[1]


# One generated dataset per test session, outside the user's cache.
pytestmark = pytest.mark.usefixtures("session_cache")


def _all_finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_first_nan_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    real_forward, calls = ReIDLoss.forward, []

    def nan_at_epoch_2_batch_2(self, feats, logits, pids):
        calls.append(1)
        total, parts = real_forward(self, feats, logits, pids)
        return (total * float("nan"), parts) if len(calls) == 3 + 2 else (total, parts)

    monkeypatch.setattr(ReIDLoss, "forward", nan_at_epoch_2_batch_2)
    out = tmp_path / "run"
    with pytest.raises(ValueError) as info:  # NonFiniteError, a ValueError: the CLI exits 2
        train(load_config(None, TINY + ["train.epochs=3"]), output=out, progress=False)
    message = str(info.value)
    assert "the loss became nan at epoch 2, batch 2" in message
    assert "last.pt keeps the weights of epoch 1" in message and "train.lr" in message
    assert len(calls) == 5  # stopped at once, not at the end of the epoch or the run
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1 and _all_finite(out / "last.pt")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=pytest.fail) for line in lines]  # strict JSON: no NaN
    assert [r["epoch"] for r in records] == [1]


def test_huge_learning_rate_exits_2_and_leaves_no_nan_on_disk(tmp_path, capsys):
    """Issue 11: SGD at lr=1e6 went on with NaN, saved NaN weights and wrote NaN into metrics.jsonl."""
    out = tmp_path / "run"
    code = main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--output", str(out),
                 *[f"--set={o}" for o in TINY + ["train.epochs=4", "train.optimizer=sgd", "train.lr=1000000"]]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # Here BatchNorm's running variance overflows first (the batch loss stays finite): stopped at that epoch's end.
    assert re.search(r"the (loss|weights) became (nan|inf|non-finite) (at|in) epoch 1", err), err
    assert "Lower the learning rate (train.lr" in err and "it was 1e+06" in err
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():
            assert _all_finite(out / name)
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            assert all(math.isfinite(v) for v in json.loads(line, parse_constant=pytest.fail).values()
                       if isinstance(v, float))
