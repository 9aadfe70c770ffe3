"""Stops at the worst moment: Ctrl-C inside a checkpoint write, a kill while metrics.jsonl is appended.

A Ctrl-C that reaches torch.save while it writes to an open file comes out of it as
``RuntimeError: [enforce fail at inline_container.cc] unexpected pos`` (raised while handling the
KeyboardInterrupt); the tests make one by handing torch.save a file whose ``write`` raises
KeyboardInterrupt, which is where a real Ctrl-C lands.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_RUN, use_cache
from reid_prune.analysis.curves import read_metrics
from reid_prune.checkpoint import atomic_save
from reid_prune.cli import main
from reid_prune.outputs import atomic_path

RUN = TINY_RUN + ["train.warmup_epochs=0", "train.milestones=[5]", "train.max_batches=1", "train.eval_every=1",
                  "eval.latency=false"]
REAL_SAVE = torch.save


class CtrlCWriter:
    """A file whose second ``write`` raises KeyboardInterrupt: a Ctrl-C in the middle of torch.save's writing."""

    def __init__(self, fh) -> None:
        self.fh, self.writes = fh, 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes > 1:
            raise KeyboardInterrupt
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def interrupted_save(obj, f, *args, **kwargs):
    """torch.save, interrupted after its first chunk, whether given a path or an open file."""
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as fh:
            return REAL_SAVE(obj, CtrlCWriter(fh), *args, **kwargs)
    return REAL_SAVE(obj, CtrlCWriter(f), *args, **kwargs)


def test_the_fake_ctrl_c_is_what_torch_turns_into_a_runtime_error(tmp_path):
    """The simulation reproduces the reported failure, so the tests below test the real case."""
    with open(tmp_path / "x.pt", "wb") as fh, pytest.raises(RuntimeError, match="unexpected pos") as info:
        interrupted_save({"w": torch.ones(3)}, fh)
    assert isinstance(info.value.__context__, KeyboardInterrupt)


def test_ctrl_c_inside_torch_save_raises_keyboard_interrupt_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "w": torch.arange(5.0)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"epoch": 2, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_other_errors_of_an_atomic_write_stay_what_they_are(tmp_path):
    """Only an error raised while handling a Ctrl-C becomes one; a plain failure keeps its type."""
    with pytest.raises(RuntimeError, match="disk says no"), atomic_path(tmp_path / "a.json"):
        raise RuntimeError("disk says no")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "b.json") as tmp:
        tmp.write_text("{")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise OSError("writer gave up")
    assert list(tmp_path.iterdir()) == []


def _cli_train(out: Path, *overrides: str, resume: bool = False) -> tuple[int, str]:
    """Run ``reid-prune train`` in this process; returns (exit code, stderr)."""
    err = io.StringIO()
    args = ["train", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--output", str(out),
            *[f"--set={o}" for o in RUN + list(overrides)]]
    with contextlib.redirect_stderr(err):
        code = main(args + (["--resume"] if resume else []))
    return code, err.getvalue()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 2-epoch run whose last.pt write of epoch 2 got a Ctrl-C: (folder, exit code, stderr, last.pt's bytes then)."""
    root = tmp_path_factory.mktemp("interrupted")
    out, seen = root / "run", {}

    def save_interrupting_epoch_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:  # last.pt of epoch 2
            seen["last.pt"] = (out / "last.pt").read_bytes()  # what must survive
            return interrupted_save(obj, f, *args, **kwargs)
        return REAL_SAVE(obj, f, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, root / "cache")
        mp.setattr(torch, "save", save_interrupting_epoch_2)
        code, err = _cli_train(out, "train.epochs=2")
    return out, code, err, seen["last.pt"]


def test_ctrl_c_during_a_checkpoint_write_exits_130_and_keeps_the_last_checkpoint(interrupted):
    """Issue 25, item 7: it printed a RuntimeError traceback and exited 1."""
    out, code, err, before = interrupted
    assert code == 130
    assert "reid-prune train: interrupted; checkpoints written so far are kept" in err
    assert "RuntimeError" not in err and "Traceback" not in err
    assert (out / "last.pt").read_bytes() == before  # the epoch-1 checkpoint, untouched
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # the temporary file was removed


def _cut_last_line(path: Path) -> str:
    """Cut the last line of ``path`` in the middle, as a kill during the append does; returns the whole line."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])
    return lines[-1]


def test_resume_drops_a_cut_short_last_metrics_line_with_a_warning(interrupted, tmp_path, monkeypatch):
    """Issue 25: a partial last line blocked --resume with a bare JSON error."""
    source, *_ = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    use_cache(monkeypatch, source.parent / "cache")
    metrics = out / "metrics.jsonl"
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    _cut_last_line(metrics)  # epoch 2's line, cut short: last.pt still holds epoch 1
    code, err = _cli_train(out, "train.epochs=2", resume=True)
    assert code == 0, err
    assert f"reid-prune: warning: {metrics}: dropped its last line (line 2)" in err and "Traceback" not in err
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_refuses_a_corrupt_line_before_the_last_naming_file_and_line(interrupted, tmp_path, monkeypatch):
    source, *_ = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    use_cache(monkeypatch, source.parent / "cache")
    metrics = out / "metrics.jsonl"
    first, second = metrics.read_text().splitlines()
    metrics.write_text(first[:10] + "\n" + second + "\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = _cli_train(out, "train.epochs=2", resume=True)
    assert code == 2 and f"reid-prune train: error: {metrics}, line 1: not a JSON record" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_plot_drops_a_cut_short_last_line_and_refuses_one_in_the_middle(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": e, "loss": 3.0 - e, "lr": 0.1} for e in (1, 2, 3)]
    lines = [json.dumps(r) + "\n" for r in records]
    (run / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][:12])
    with pytest.warns(UserWarning, match="dropped its last line"):
        assert read_metrics(run) == records[:2]

    capsys.readouterr()
    main(["plot", str(run)])  # exits 2 without matplotlib, after writing curves.csv
    err = capsys.readouterr().err
    assert f"{run / 'metrics.jsonl'}: dropped its last line (line 3)" in err and "Traceback" not in err
    assert (run / "curves.csv").read_text().splitlines()[1:] == ["run,1,2.0,0.1,,", "run,2,1.0,0.1,,"]

    (run / "metrics.jsonl").write_text(lines[0] + lines[1][:12] + "\n" + lines[2])
    assert main(["plot", str(run)]) == 2
    assert f"{run / 'metrics.jsonl'}, line 2: not a JSON record" in capsys.readouterr().err


def test_ctrl_c_while_torch_loads_exits_130_without_a_traceback():
    """The console script's entry imports the CLI (and torch) inside main: an interrupt there is handled."""
    import subprocess
    import sys

    from reid_prune.entry import STARTUP_INTERRUPTED

    # The import of the CLI is interrupted as a Ctrl-C would, at its start.
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def interrupted(name, *args, **kwargs):\n"
            "    if name == 'cli' or name.endswith('.cli'):\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *args, **kwargs)\n"
            "import reid_prune.entry as entry\n"
            "assert 'torch' not in sys.modules, 'importing the entry must not load torch'\n"
            "builtins.__import__ = interrupted\n"
            "sys.exit(entry.main(['--help']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == STARTUP_INTERRUPTED and "Traceback" not in done.stderr
