"""Resume on another machine: ``train.amp: auto`` and ``train.channels_last: auto`` follow what last.pt recorded.

This machine's answer to "does the CPU compute bf16 natively?" is replaced by monkeypatching
``reid_prune.precision.cpu_has_native_bf16``: the first part of a run sees a CPU without bf16
(``auto`` resolves to fp32), the resume one with it (``auto`` would resolve to bf16).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_RUN
from reid_prune import precision
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.precision import ComputeSettings

RUN = TINY_RUN + ["train.warmup_epochs=0", "train.milestones=[5]", "train.max_batches=2", "train.eval_every=1",
                  "eval.latency=false"]

pytestmark = pytest.mark.usefixtures("session_cache")


def _cli_train(out: Path, *overrides: str, resume: bool = False) -> tuple[int, str]:
    err = io.StringIO()
    args = ["train", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--output", str(out),
            *[f"--set={o}" for o in RUN + list(overrides)]]
    with contextlib.redirect_stderr(err):
        code = main(args + (["--resume"] if resume else []))
    return code, err.getvalue()


def _last(out: Path) -> dict:
    return torch.load(out / "last.pt", weights_only=True)


def test_an_auto_run_from_a_cpu_without_bf16_resumes_exactly_on_one_with_it(tmp_path, monkeypatch):
    """Issue 25, item 5: the resume was refused, and the hint's --set train.amp=bf16 and train.amp=off were too."""
    # The reference: two epochs in fp32 (channels-last, auto's layout on the CPU), never stopped.
    assert _cli_train(tmp_path / "full", "train.epochs=2", "train.amp=off")[0] == 0
    full = _last(tmp_path / "full")
    assert full["compute"] == {"precision": "fp32", "memory_format": "channels_last"}

    out = tmp_path / "split"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert _cli_train(out, "train.epochs=1")[0] == 0  # amp: auto, resolved to fp32 here
    assert _last(out)["compute"]["precision"] == "fp32"

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # the machine it resumes on has bf16
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = _cli_train(out, "train.epochs=2", "train.amp=bf16", resume=True)
    assert code == 2 and "was trained with precision fp32" in err and "train.amp=bf16 gives precision bf16" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused before writing anything
    hint = re.search(r"continue it exactly with --set (\S+)", err).group(1).rstrip(",")
    assert hint == "train.amp=off"

    code, err = _cli_train(out, "train.epochs=2", resume=True)  # auto: goes on in the recorded fp32
    assert code == 0, err
    resumed = _last(out)
    assert resumed["epoch"] == 2 and resumed["compute"] == full["compute"]
    for key, weights in full["state_dict"].items():  # in bf16 they would differ
        assert torch.equal(resumed["state_dict"][key], weights), key

    code, err = _cli_train(out, "train.epochs=2", hint, resume=True)  # the hint is accepted (nothing left to train)
    assert code == 0, err


def _cfg(*overrides: str):
    return load_config(None, ["train.device=cpu", *overrides])


def resumed_compute(*args):
    from reid_prune.jobs.train import resumed_compute  # here, so that the test above runs against any version

    return resumed_compute(*args)


@pytest.mark.parametrize("native", [True, False])
def test_auto_takes_the_recorded_precision_and_memory_format(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    for record in ({"precision": "fp32", "memory_format": "contiguous"},
                   {"precision": "bf16", "memory_format": "channels_last"},
                   {"precision": "fp32", "memory_format": "channels_last"}):
        cfg = _cfg()
        here = ComputeSettings.from_config(cfg.train, "cpu")
        emulated = record["precision"] == "bf16" and not native
        with pytest.warns(UserWarning, match="which this CPU emulates") if emulated else contextlib.nullcontext():
            compute = resumed_compute(cfg, record, Path("run/last.pt"), here)
        assert (compute.precision, compute.memory_format_name) == (record["precision"], record["memory_format"])


def test_an_explicit_setting_must_give_the_record_and_the_hint_names_one_that_does(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    record = {"precision": "fp32", "memory_format": "contiguous"}
    cfg = _cfg("train.amp=bf16", "train.channels_last=true")
    with pytest.raises(ValueError) as info:
        resumed_compute(cfg, record, Path("run/last.pt"), ComputeSettings.from_config(cfg.train, "cpu"))
    message = str(info.value)
    assert ("train.amp=bf16 gives precision bf16 and train.channels_last=true gives memory_format channels_last"
            in message)
    fixes = re.search(r"continue it exactly with (.*), or with auto", message).group(1)
    assert fixes == "--set train.amp=off --set train.channels_last=false"
    fixed = _cfg(*fixes.replace("--set ", "").split())  # what the hint says is accepted
    compute = resumed_compute(fixed, record, Path("run/last.pt"), ComputeSettings.from_config(fixed.train, "cpu"))
    assert (compute.precision, compute.memory_format_name) == ("fp32", "contiguous")


def test_records_that_cannot_be_continued_here_are_refused():
    cfg = _cfg()
    here = ComputeSettings.from_config(cfg.train, "cpu")
    with pytest.raises(ValueError, match="trained with fp16 autocast, which runs on CUDA only"):
        resumed_compute(cfg, {"precision": "fp16", "memory_format": "channels_last"}, Path("last.pt"), here)
    with pytest.raises(ValueError, match="records an unknown precision or memory format"):
        resumed_compute(cfg, {"precision": "fp8", "memory_format": "channels_last"}, Path("last.pt"), here)
