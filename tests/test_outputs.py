"""Every command checks its output paths before any work, and exits 2 naming the path and the reason."""

import os
from pathlib import Path

import pytest

from conftest import TINY_RUN
from reid_prune.cli import main
from reid_prune.jobs import prune as prune_run, wiring as run

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_RUN + ["train.warmup_epochs=0", "eval.latency=false", "train.max_batches=2"]


@pytest.fixture
def checkpoint(tiny_run):
    return tiny_run / "run" / "best.pt"


@pytest.fixture
def blocked(tmp_path):
    """A file, so that it cannot be a folder and nothing can be created under it."""
    path = tmp_path / "taken"
    path.write_text("not a folder")
    return path


def _forbid(monkeypatch, *targets):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    for module, name in targets:
        monkeypatch.setattr(module, name, forbidden)


def _config_args(*overrides: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "demo.yaml"), "--quiet", *[f"--set={o}" for o in TINY + list(overrides)]]


def test_helpers_name_path_and_reason(tmp_path, blocked):
    from reid_prune.outputs import OutputPathError, check_output_dir, check_output_file

    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checks create nothing
    check_output_file(blocked)  # an existing file is replaced
    with pytest.raises(OutputPathError, match=f"--output '{blocked}': a file of that name exists"):
        check_output_dir(blocked)
    with pytest.raises(OutputPathError, match=f"--json '{blocked / 'r.json'}': '{blocked}' is a file"):
        check_output_file(blocked / "r.json", "--json")
    with pytest.raises(OutputPathError, match=f"--output '{tmp_path}': is a folder"):
        check_output_file(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_folder_without_write_permission(tmp_path):
    from reid_prune.outputs import OutputPathError, check_output_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="no permission to write in"):
            check_output_dir(locked / "run")
    finally:
        locked.chmod(0o700)


def test_train_into_a_file_exits_2_before_reading_data(blocked, monkeypatch, capsys):
    _forbid(monkeypatch, (run, "prepare_dataset"))
    assert main(["train", *_config_args(), "--output", str(blocked)]) == 2
    err = capsys.readouterr().err
    assert f"--output '{blocked}': a file of that name exists" in err and "Traceback" not in err
    assert main(["train", *_config_args(), "--output", str(blocked / "run")]) == 2
    assert f"'{blocked}' is a file, so nothing can be created under it" in capsys.readouterr().err


def test_eval_json_into_a_folder_exits_2_before_evaluating(checkpoint, tmp_path, monkeypatch, cache_at, capsys):
    cache_at(checkpoint.parents[1] / "cache")
    import reid_prune.jobs.evaluate as evaluate_job

    _forbid(monkeypatch, (evaluate_job, "evaluate_checkpoint"))
    assert main(["eval", *_config_args(), "--checkpoint", str(checkpoint), "--json", str(tmp_path)]) == 2
    assert f"--json '{tmp_path}': is a folder" in capsys.readouterr().err


def test_prune_into_a_file_exits_2_before_pruning(checkpoint, blocked, monkeypatch, cache_at, capsys):
    """Issue 11: prune found out only after pruning, fine-tuning and evaluating."""
    cache_at(checkpoint.parents[1] / "cache")
    _forbid(monkeypatch, (prune_run, "prepare_dataset"), (prune_run, "read_checkpoint"))
    assert main(["prune", *_config_args(), "--checkpoint", str(checkpoint), "--method", "haoli", "--rate", "0.3",
                 "--output", str(blocked)]) == 2
    assert f"--output '{blocked}': a file of that name exists" in capsys.readouterr().err


def test_export_extract_synth_and_bench_check_their_outputs(checkpoint, tmp_path, blocked, monkeypatch, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path)]) == 2
    assert f"--output '{tmp_path}': is a folder" in capsys.readouterr().err
    images = checkpoint.parents[1] / "cache"
    assert main(["extract", "--checkpoint", str(checkpoint), "--images", str(images), "--quiet",
                 "--output", str(blocked / "feats.npy")]) == 2
    assert f"'{blocked}' is a file" in capsys.readouterr().err
    assert main(["synth", "--output", str(blocked / "data")]) == 2
    assert f"'{blocked}' is a file" in capsys.readouterr().err
    from reid_prune.bench import cells

    _forbid(monkeypatch, (cells, "train"), (cells, "prepare_dataset"))
    assert main(["bench", "--config", str(REPO / "configs" / "bench" / "synthetic_tiny.yaml"), "--quiet",
                 "--output", str(blocked)]) == 2
    assert f"--output '{blocked}': a file of that name exists" in capsys.readouterr().err
    assert sorted(p.name for p in blocked.parent.iterdir()) == ["taken"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_folder_nothing_can_be_written_in_is_refused_even_for_root():
    from reid_prune.outputs import OutputPathError, check_output_dir

    # os.access says yes to root everywhere; writing is tried instead.
    with pytest.raises(OutputPathError, match="cannot write in '/proc'"):
        check_output_dir("/proc/reid-prune-run")


def test_an_output_that_is_the_input_checkpoint_is_refused(tmp_path):
    from reid_prune.outputs import OutputPathError, check_output_file

    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    with pytest.raises(OutputPathError, match="is the input file itself"):
        check_output_file(tmp_path / "." / "best.pt", "--json", inputs=[checkpoint])
    assert checkpoint.read_bytes() == b"weights"
    check_output_file(tmp_path / "eval.json", "--json", inputs=[checkpoint])


def test_atomic_writes_get_the_usual_permissions_and_leave_nothing_on_failure(tmp_path):
    """Every atomic writer (checkpoints, bench JSON and CSV, latency tables) goes through atomic_path: the file
    gets 0666 & ~umask like an ordinary open(), not mkstemp's 0600, and a failed write leaves no file at all."""
    import torch

    from reid_prune.bench.cells import write_json
    from reid_prune.checkpoint import atomic_save
    from reid_prune.outputs import atomic_path

    old = os.umask(0o022)
    try:
        atomic_save({"a": torch.zeros(2)}, tmp_path / "model.pt")
        write_json(tmp_path / "result.json", {"mAP": 1.0})
        with atomic_path(tmp_path / "results.csv") as tmp, open(tmp, "w") as fh:
            fh.write("a,b\n")
        for name in ("model.pt", "result.json", "results.csv"):
            assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
        with pytest.raises(RuntimeError), atomic_path(tmp_path / "broken.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "result.json", "results.csv"]
