"""Fixes from a hostile sweep: each bad input stops with one line naming it and the fix, before any work."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import REPO
from reid_prune.cli import main


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reid-prune {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_resume_and_plot_name_a_metrics_folder(tiny_run, cache_at, tmp_path, capsys):
    """A. metrics.jsonl replaced by a folder: resume crashed mid-run (IsADirectoryError), plot said 'does not exist'."""
    cache_at(tiny_run / "cache")
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    before = sorted(p.name for p in run.iterdir())
    stamp = (run / "last.pt").stat().st_mtime_ns
    # The run's own config, one more epoch: everything else about the resume is valid.
    args = ["train", "--config", str(run / "config.yaml"), "--quiet", "--output", str(run), "--resume",
            "--set=train.epochs=2"]
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    assert f"{run / 'metrics.jsonl'} is a folder" in line and "move or delete it" in line
    assert sorted(p.name for p in run.iterdir()) == before and (run / "last.pt").stat().st_mtime_ns == stamp
    assert main(["plot", str(run), "--output", str(tmp_path / "curves.png")]) == 2
    line = _one_error_line(capsys.readouterr().err, "plot")
    assert f"{run / 'metrics.jsonl'} is a folder" in line and "does not exist" not in line
    assert not (tmp_path / "curves.png").exists()


@pytest.mark.parametrize("text", ["", "# rates to come\n"])
def test_an_empty_layer_rates_file_is_named_not_the_config(tmp_path, capsys, text):
    """E. An empty --layer-rates file said 'see configs/demo.yaml' (the --config), which holds no layer rates."""
    rates = tmp_path / "rates.yaml"
    rates.write_text(text)
    out = tmp_path / "pruned"
    assert main(["prune", "--config", str(REPO / "configs" / "demo.yaml"), "--checkpoint", str(tmp_path / "none.pt"),
                 "--method", "haoli", "--layer-rates", str(rates), "--output", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err, "prune")
    assert f"--layer-rates file {str(rates)!r} is empty" in line and "layer1.0.conv1: 0.3" in line
    assert "demo.yaml" not in line and not out.exists()


@pytest.fixture(scope="module")
def model():
    import reid_prune

    return reid_prune.build_model("resnet18").eval()


@pytest.mark.parametrize("size", [(0, 32), (-64, 32), (64, 0)])
def test_prune_refuses_an_input_size_without_pixels(model, size):
    """C. input_size (0, 32) failed in a convolution, (-64, 32) in the tracer, naming nothing the caller wrote."""
    import reid_prune

    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"^prune\(\): input_size: expected \(height, width\) in pixels, each >= 1, "
                                         rf"got \({size[0]}, {size[1]}\)$"):
        reid_prune.prune(model, "haoli", target_macs=0.5, input_size=size)
    with pytest.raises(ValueError, match=r"^get_pruner\(\): input_size: "):
        reid_prune.get_pruner("haoli", rate=0.3, input_size=size)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_prune_refuses_empty_layer_rates(model):
    """C. layer_rates={} returned an unpruned copy without a word; the command line refuses an empty file."""
    import reid_prune

    with pytest.raises(ValueError, match=r"^prune\(\): layer_rates: empty, so nothing would be pruned; "):
        reid_prune.prune(model, "haoli", layer_rates={}, input_size=(64, 32))
    # A mapping that names a group is still taken (the check is on emptiness, not on layer_rates).
    group = "layer1.0.conv1"
    small = reid_prune.prune(model, "haoli", layer_rates={group: 0.5}, input_size=(64, 32))
    assert small.get_submodule(group).out_channels == model.get_submodule(group).out_channels // 2


def test_save_checkpoint_to_a_folder_names_the_folder(model, tmp_path):
    """C. save_checkpoint('/some/folder', m) raised IsADirectoryError naming a temporary file."""
    import reid_prune

    folder = tmp_path / "runs"
    folder.mkdir()
    with pytest.raises(ValueError) as info:
        reid_prune.save_checkpoint(folder, model)
    assert str(info.value) == f"'{folder}' is a folder; give the name of a file to write"
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


@pytest.mark.parametrize("inside", [None, "last.pt", "best.pt"])
def test_load_model_on_a_folder_says_so(tmp_path, inside):
    """C. load_model('runs/base') on a folder said it 'does not exist'; it names the checkpoint inside."""
    import reid_prune

    if inside:
        (tmp_path / inside).write_bytes(b"")
    with pytest.raises(ValueError) as info:
        reid_prune.load_model(tmp_path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {str(tmp_path)!r} is a folder, not a file; ")
    assert "does not exist" not in message
    assert (f"'{tmp_path / inside}'" in message) if inside else "best.pt" in message


@pytest.mark.parametrize("size", [(128, 64), (64, 32)])
def test_eval_warns_at_another_size_than_trained(tiny_run, cache_at, tmp_path, capsys, size):
    """D. eval at 128x64 of a checkpoint trained at 64x32 (its stored config says so) passed without a word."""
    cache_at(tiny_run / "cache")
    checkpoint = tiny_run / "run" / "best.pt"
    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)["config"]["data"]
    assert (trained["height"], trained["width"]) == (64, 32)
    report = tmp_path / "eval.json"
    assert main(["eval", "--config", str(tiny_run / "run" / "config.yaml"), "--checkpoint", str(checkpoint),
                 "--quiet", "--json", str(report), f"--set=data.height={size[0]}", f"--set=data.width={size[1]}",
                 "--set=eval.latency=false"]) == 0  # a warning, not a refusal
    err = capsys.readouterr().err
    warned = f"was trained at 64x32 (height x width) but data.height/width give {size[0]}x{size[1]} here"
    if size == (64, 32):
        assert "was trained at" not in err
    else:
        assert warned in err and "--set data.height=64 --set data.width=32" in err
    assert report.is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_unchecked_unreadable_image_mid_training_exits_2_naming_it(tmp_path, capsys, workers):
    """B. check_images=off, no cache: an unreadable image raised an OSError traceback mid-training (exit 1)."""
    from test_images import _dataset_with_bad_images

    root, bad = _dataset_with_bad_images(tmp_path)  # a truncated gallery image (read by every evaluation) and an empty train one
    out = tmp_path / "run"
    overrides = ["data.dataset=market_layout", f"data.root={root}", "data.height=32", "data.width=16", "data.p=2",
                 "data.k=2", f"data.workers={workers}", "data.check_images=off", "data.cache=false",
                 "model.arch=resnet18", "train.epochs=1", "train.warmup_epochs=0", "train.device=cpu",
                 "eval.latency=false"]
    assert main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--output", str(out),
                 *[f"--set={o}" for o in overrides]]) == 2
    line = _one_error_line(capsys.readouterr().err, "train")
    named = [path for path in bad if f"could not read image '{path}'" in line]
    assert len(named) == 1, line
    assert "data.check_images=error" in line and "data.check_images=skip" in line and "remove or replace" in line
    kept = sorted(p.name for p in out.iterdir())
    assert "config.yaml" in kept and line.endswith(f"kept in '{out}': {', '.join(kept)}" +
                                                   (" (--resume continues from last.pt once the image is fixed)"
                                                    if "last.pt" in kept else ""))
