"""What the command line says: titles, units, interruptions and errors that name the flags the user typed."""

from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN
from reid_prune.cli import main
from reid_prune.data import generate_synthetic
from reid_prune.jobs import prune as prune_run

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_RUN + ["train.warmup_epochs=0", "train.max_batches=2", "eval.latency_batch_sizes=[1]"]


@pytest.fixture
def run(tiny_run):
    return tiny_run


def _config_args(*overrides: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "demo.yaml"), "--quiet", *[f"--set={o}" for o in TINY + list(overrides)]]


def test_eval_title_names_the_dataset_and_latency_is_per_image(run, tmp_path, capsys):
    root = generate_synthetic(tmp_path / "folder", num_ids=4, num_test_ids=3, images_per_camera=2)
    assert main(["eval", *_config_args("data.dataset=market_layout", f"data.root={root}", "data.name=my_cameras"),
                 "--checkpoint", str(run / "run" / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert f"evaluation of {run / 'run' / 'best.pt'} on my_cameras" in out  # data.name, not the kind market_layout
    assert "ms/image" in out


def test_prune_table_gives_latency_per_image(run, tmp_path, capsys, cache_at):
    cache_at(run / "cache")
    assert main(["prune", *_config_args(), "--checkpoint", str(run / "run" / "best.pt"), "--method", "haoli",
                 "--rate", "0.3", "--output", str(tmp_path / "pruned")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("latency")]
    assert lines and all(line.startswith("latency batch1, ms/image") for line in lines)


def test_ctrl_c_during_prune_does_not_suggest_resume(run, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_run, "prune_checkpoint", interrupted)
    assert main(["prune", *_config_args(), "--checkpoint", str(run / "run" / "best.pt"), "--method", "haoli",
                 "--rate", "0.3", "--output", str(tmp_path / "pruned")]) == 130
    err = capsys.readouterr().err
    assert "interrupted; nothing was written" in err and "--resume" not in err


def test_extract_device_errors_name_the_flag(run, tmp_path, capsys):
    args = ["extract", "--checkpoint", str(run / "run" / "best.pt"), "--images", str(run / "cache"), "--quiet",
            "--output", str(tmp_path / "f.npy")]
    assert main(args + ["--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "--device: expected auto, cpu, cuda or cuda:N, got 'gpu'" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "--device: 'cuda' was asked for but CUDA is not available" in err and "train.device" not in err
    assert not (tmp_path / "f.npy").exists()
    with pytest.raises(SystemExit):
        main(args + ["--workers", "-1"])
    assert "argument --workers: must be >= 0, got -1" in capsys.readouterr().err
