"""`reid-prune prune` end to end on synthetic data, for every registered method, and its errors."""

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN
from reid_prune import load_model
from reid_prune.cli import main
from reid_prune.pruners import available

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_RUN + ["train.warmup_epochs=0", "eval.latency_batch_sizes=[1]", "prune.data_batches=2",
                   "train.max_batches=3"]
# Method settings that keep each run to seconds on tiny data.
OPTIONS = {
    "molchanov": ["finetune_steps=1"],
    "entropy": ["finetune_steps=1"],
    "thinet": ["finetune_steps=1"],
    "channel_pruning": ["finetune_steps=1"],
    # One epoch of play-and-prune cuts only what is far under the threshold; widen both bounds.
    "afp_prc": ["tolerance=100", "threshold=1.0"],
}


@pytest.fixture
def trained(tiny_run, cache_at):
    """The session's tiny run (ROOT/run/best.pt, a ResNet-18 of 12 identities), with the cache on its dataset."""
    cache_at(tiny_run / "cache")
    return tiny_run


def _args(root: Path, *extra: str) -> list[str]:
    return ["prune", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet",
            "--checkpoint", str(root / "run" / "best.pt"), *[f"--set={o}" for o in TINY], *extra]


CASES = [(m, []) for m in available()] + [("fpgm", ["--option", "mode=soft"])]
# All methods end to end take minutes together: the fast lane (-m "not slow") keeps one of the quickest, hard FPGM.
FAST_CASES = [("fpgm", [])]


@pytest.mark.parametrize("method, extra", [
    pytest.param(m, e, id=f"{m}{'-' + e[1] if e else ''}", marks=() if (m, e) in FAST_CASES else pytest.mark.slow)
    for m, e in CASES])
def test_every_method_prunes_end_to_end(trained, tmp_path, method, extra, capsys):
    options = [x for o in OPTIONS.get(method, []) for x in ("--option", o)]
    out = tmp_path / method
    code = main(_args(trained, "--method", method, "--rate", "0.3", "--finetune-epochs", "1", "--output", str(out),
                      *extra, *options))
    assert code == 0, capsys.readouterr().err
    table = capsys.readouterr().out
    assert "before" in table and "params" in table
    report = json.loads((out / "report.json").read_text())
    assert report["finetuned"]["params"] < report["before"]["params"]
    assert report["finetuned"]["macs"] < report["before"]["macs"]
    for stage in ("before", "finetuned"):
        assert {"mAP", "rank1", "params", "macs", "flops", "latency_ms"} <= report[stage].keys()
    # Surgery builds new NCHW layers: the engine puts every stage back in the configured layout.
    assert {report[s]["memory_format"] for s in ("before", "pruned", "finetuned") if report[s]} == {"channels_last"}
    assert "channels_last" in table  # the latency rows name their setting
    model = load_model(out / "pruned.pt")
    assert sum(p.numel() for p in model.parameters()) == report["finetuned"]["params"]
    assert torch.load(out / "pruned.pt", weights_only=True)["prune"]["method"] == method
    assert model(torch.randn(2, 3, 64, 32)).shape[0] == 2


def test_pruned_checkpoint_is_smaller_on_disk_and_resumes_in_train(trained, tmp_path):
    out = tmp_path / "haoli"
    assert main(_args(trained, "--method", "haoli", "--target-macs", "0.5", "--scope", "all", "--output", str(out))) == 0
    report = json.loads((out / "report.json").read_text())
    assert abs(report["pruned"]["macs"] / report["before"]["macs"] - 0.5) <= 0.02
    assert report["finetuned"] is None
    assert (out / "pruned.pt").stat().st_size < 0.75 * (trained / "run" / "best.pt").stat().st_size
    # The pruned model is evaluated by `eval` with the same config.
    assert main(["eval", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--checkpoint",
                 str(out / "pruned.pt"), *[f"--set={o}" for o in TINY]]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "haoli", "--rate", "1.0"], "prune.rate: a prune fraction must lie in [0, 1)"),
        (["--method", "l1norm", "--rate", "0.3"], "unknown pruning method 'l1norm'; valid names: afp_prc"),
        (["--method", "haoli", "--target-macs", "0.05", "--set=prune.min_channels=64"], "cannot be met"),
        (["--method", "haoli", "--rate", "0.3", "--set=model.arch=resnet50"], "holds a resnet18 but the config"),
        (["--method", "psfp", "--rate", "0.3"], "prunes during training: give --finetune-epochs"),
        (["--method", "fpgm", "--rate", "0.3", "--option", "mode=medium"],
         "config key prune.options.mode: expected one of hard, soft, got 'medium'"),
        (["--method", "haoli", "--rate", "0.3", "--set=prune.allocation=glob"],
         "config key prune.allocation: expected one of uniform, global, layer_rates"),
    ],
)
def test_errors_are_clear_and_write_nothing(trained, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(_args(trained, *extra, "--output", str(out))) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_fine_tuning_on_more_identities_than_the_checkpoint_knew(trained, tmp_path, capsys):
    """A review found a traceback, after the pruning work, when the fine-tuning data had other identities."""
    out = tmp_path / "other-ids"
    assert main(_args(trained, "--method", "haoli", "--rate", "0.3", "--finetune-epochs", "1", "--output", str(out),
                      "--set=data.synthetic.ids=16")) == 0
    assert "identity classifier has 12 classes but the training split has 16 identities" in capsys.readouterr().err
    assert load_model(out / "pruned.pt").classifier.out_features == 16
