"""TensorBoard logs (train.tensorboard, --tensorboard): read back with tensorboard's own reader and compared with
metrics.jsonl and report.json; a resume writes each epoch once; without the package, one line says how to install it."""

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_RUN
from reid_prune.cli import main
from reid_prune.engine import tensorboard as tb
from reid_prune.outputs import OutputPathError

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_RUN + ["train.warmup_epochs=0", "train.max_batches=2", "train.eval_every=1", "eval.latency=false"]
INSTALL_HINTS = ("pip install -e '.[tensorboard]'", "bash scripts/setup.sh tensorboard")

pytestmark = pytest.mark.usefixtures("session_cache")


def _args(command: str, *extra: str, sets: list[str] = TINY) -> list[str]:
    return [command, "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", *[f"--set={o}" for o in sets],
            *extra]


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows the folder (its reader, restart markers applied)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(value: float) -> float:
    """``value`` as TensorBoard stores a scalar: a float32."""
    return float(np.float32(value))


def _leaves(values: dict, prefix: str) -> dict[str, float]:
    """Every number under ``values`` (nested dicts joined with '/'), booleans and None left out."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = value
    return out


def test_train_logs_each_epoch_as_metrics_jsonl_and_a_resume_writes_each_epoch_once(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main(_args("train", "--output", str(out), "--tensorboard", sets=TINY + ["train.epochs=1"])) == 0
    kept = tmp_path / "last-epoch1.pt"
    shutil.copy(out / "last.pt", kept)
    assert main(_args("train", "--output", str(out), "--resume", "--tensorboard",
                      sets=TINY + ["train.epochs=2"])) == 0
    # As if a kill had stopped epoch 2 after its scalars were logged but before last.pt was written:
    # the resume trains and logs epoch 2 again.
    shutil.copy(kept, out / "last.pt")
    assert main(_args("train", "--output", str(out), "--resume", "--tensorboard",
                      sets=TINY + ["train.epochs=2"])) == 0, capsys.readouterr().err
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 3  # one file per process, none deleted

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "epoch":
                group = "eval" if key in ("mAP", "rank1", "rank5", "rank10", "mINP") else "train"
                expected.setdefault(f"{group}/{key}", []).append((record["epoch"], f32(value)))
    # Loss terms, learning rate and every metric, each epoch once; epoch 2's values (its seconds differ from
    # one try to the other) are those of the try metrics.jsonl kept.
    assert {"train/loss", "train/triplet", "train/id", "train/lr", "eval/mAP", "eval/rank1"} <= expected.keys()
    assert _scalars(out / "tensorboard") == expected


def test_prune_logs_fine_tuning_each_stage_and_the_kept_widths_as_report_json(tiny_run, cache_at, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    cache_at(tiny_run / "cache")
    out, logs = tmp_path / "fpgm", tmp_path / "logs"
    code = main(_args("prune", "--checkpoint", str(tiny_run / "run" / "best.pt"), "--method", "fpgm", "--rate", "0.3",
                      "--finetune-epochs", "1", "--output", str(out), "--tensorboard", str(logs),
                      sets=TINY_RUN + ["train.warmup_epochs=0", "train.max_batches=2", "eval.latency_batch_sizes=[1]"]))
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    scalars = _scalars(logs)
    assert not (out / "tensorboard").exists()  # --tensorboard DIR writes there alone

    expected = {}
    for stage in ("before", "pruned", "finetuned", "achieved"):
        expected.update(_leaves({k: v for k, v in report[stage].items() if k != "latency_setting"},
                                f"prune/{stage}"))
    assert "prune/before/latency_ms/batch1" in expected and "prune/achieved/latency_ratio/batch1" in expected
    for row in report["widths"]:
        expected[f"widths/kept/{row['group']}"] = row["kept"]
        expected[f"widths/fraction/{row['group']}"] = row["fraction"]
    assert any(row["kept"] < row["channels"] for row in report["widths"])
    assert {tag: values for tag, values in scalars.items() if tag.startswith(("prune/", "widths/"))} == {
        tag: [(0, f32(value))] for tag, value in expected.items()}
    # The fine-tuning epoch: its loss terms, and its evaluation, which scored the model report.json's finetuned
    # stage scored, on the same split (no validation split here).
    assert {"train/loss", "train/lr", "train/seconds"} <= scalars.keys()
    assert [step for step, _ in scalars["train/loss"]] == [1] and math.isfinite(scalars["train/loss"][0][1])
    assert scalars["eval/mAP"] == [(1, f32(report["finetuned"]["mAP"]))]
    assert scalars["eval/rank1"] == [(1, f32(report["finetuned"]["rank1"]))]


@pytest.mark.parametrize("command", ["train", "prune"])
def test_without_the_package_one_line_says_how_to_install_it_before_any_work(command, tiny_run, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if tensorboard were absent
    out = tmp_path / "out"
    extra = ["--checkpoint", str(tiny_run / "run" / "best.pt"), "--method", "fpgm", "--rate", "0.3"] \
        if command == "prune" else []
    assert main(_args(command, *extra, "--output", str(out), "--tensorboard")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"reid-prune {command}: error: train.tensorboard")
    assert all(hint in err for hint in INSTALL_HINTS), err
    assert not out.exists()  # stopped before any work: no folder, no file


def test_the_setting_is_checked_before_any_work(tmp_path, monkeypatch):
    # Off: nothing is imported, so a missing package changes nothing.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert tb.open_log(False, tmp_path) is None
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tensorboard\]'"):
        tb.open_log(True, tmp_path)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard")
    pytest.importorskip("torch.utils.tensorboard")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="train.tensorboard .* a file of that name exists"):
        tb.open_log(str(tmp_path / "file"), tmp_path)
    with pytest.raises(ValueError, match="train.tensorboard: an empty folder name"):
        tb.open_log(" ", tmp_path)
    assert tb.open_log(True, tmp_path / "run").folder == tmp_path / "run" / "tensorboard"
    assert not (tmp_path / "run").exists()  # nothing is written before the first scalar
    # Under torchrun only rank 0 logs; the other ranks still check the setting.
    monkeypatch.setattr(tb, "is_main_process", lambda: False)
    assert tb.open_log(str(tmp_path / "logs"), tmp_path) is None
