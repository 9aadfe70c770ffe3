"""scripts/trace_training_prune.py on tiny synthetic data: what it prints, and its refusal of one-shot methods."""

from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import REPO, TINY_RUN
from reid_prune.config import load_config
from reid_prune.jobs.evaluate import evaluate_checkpoint

SCRIPT = REPO / "scripts" / "trace_training_prune.py"


def _script():
    spec = importlib.util.spec_from_file_location("trace_training_prune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(tmp_path, tiny_run, method: str) -> list[str]:
    config = tmp_path / "tiny.yaml"
    config.write_text("data: {dataset: synthetic}\n")
    overrides = TINY_RUN + ["train.max_batches=2", f"prune.method={method}", "prune.target_macs=0.5",
                            "prune.finetune_epochs=2"]
    return ["--config", str(config), "--checkpoint", str(tiny_run / "run" / "last.pt"),
            "--output", str(tmp_path / "out"), *[a for o in overrides for a in ("--set", o)]]


@pytest.mark.slow
def test_trace_prints_each_epoch_and_the_removal(tmp_path, tiny_run, cache_at, capsys):
    cache_at(tiny_run / "cache")
    assert _script().main(_args(tmp_path, tiny_run, "psfp")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    epochs = [re.fullmatch(r"epoch (\d): mAP ([\d.]+) before its pruning step, ([\d.]+) after", line) for line in lines]
    epochs = [m for m in epochs if m]
    assert [int(m.group(1)) for m in epochs] == [1, 2]
    handed = re.fullmatch(r"handed to the final removal: mAP ([\d.]+)", lines[-2])
    removed = re.fullmatch(r"after removal: mAP ([\d.]+), MACs kept ([\d.]+)", lines[-1])
    assert handed and removed
    # Nothing trains between the last epoch's step and the removal: the same model is scored twice.
    assert handed.group(1) == epochs[-1].group(3)
    assert float(removed.group(2)) == pytest.approx(0.5, abs=0.02)
    # The printed mAP is the saved model's, scored again on its own.
    cfg = load_config(tmp_path / "tiny.yaml", TINY_RUN + ["eval.latency=false"])
    assert float(removed.group(1)) == pytest.approx(evaluate_checkpoint(cfg, tmp_path / "out" / "pruned.pt",
                                                                        progress=False)["mAP"], abs=0.006)


@pytest.mark.parametrize("change, message", [
    (["--set", "prune.method=haoli"], "prunes before fine-tuning"),
    (["--checkpoint", "missing.pt"], "is not a file"),
    (["--set", "prune.finetune_epochs=fast"], "prune.finetune_epochs"),
])
def test_trace_stops_on_bad_input_with_exit_2_before_any_work(tmp_path, tiny_run, capsys, change, message):
    args = _args(tmp_path, tiny_run, "psfp") + change  # a later --checkpoint or --set wins
    assert _script().main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
