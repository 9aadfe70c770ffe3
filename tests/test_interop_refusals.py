"""What ``import`` refuses (one line naming the keys, nothing written), and an imported model through the CLI.

The refused files are built from each tool's naming (see tests/test_interop.py); OSNet and ResNeXt
come from torchreid itself where it is installed.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import TINY_RUN
from test_interop import bot_state, fastreid_state, images, random_tensors, trunk_shapes

import reid_prune
from reid_prune.cli import main
from reid_prune.interop.importer import CONFIG_KEYS
from reid_prune.jobs.evaluate import ARCHITECTURE_KEYS

REPO = Path(__file__).resolve().parents[1]


def _refused(tmp_path: Path, obj, source: str, match: str, **options) -> str:
    """Save ``obj``, import it, expect a ValueError matching ``match`` and no file written; the message."""
    path = tmp_path / "their.pth"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=match) as caught:
        reid_prune.import_checkpoint(path, source=source, output=tmp_path / "out.pt", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["their.pth"]  # nothing written, no temporary left
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("source, key, family", [
    ("fastreid", "backbone.layer1.0.bn1.IN.weight", "IBN-Net"),
    ("bot", "base.layer1.0.se_module.fc1.weight", "squeeze-and-excitation"),
    ("fastreid", "backbone.NL_2.0.g.weight", "non-local"),
])
def test_other_backbones_are_refused_by_name(tmp_path, source, key, family):
    state = fastreid_state("resnet50") if source == "fastreid" else bot_state("resnet50")
    state[key] = torch.ones(4)
    message = _refused(tmp_path, state, source, family)
    assert key in message and "only plain ResNet-18, -34 and -50" in message


def test_osnet_and_resnext_from_torchreid_are_refused(tmp_path):
    torchreid = pytest.importorskip("torchreid")
    osnet = torchreid.models.build_model("osnet_x0_25", num_classes=5, pretrained=False)
    assert "conv1.conv.weight" in _refused(tmp_path, osnet.state_dict(), "torchreid", "OSNet")
    (tmp_path / "their.pth").unlink()
    resnext = torchreid.models.build_model("resnext50_32x4d", num_classes=5, pretrained=False)
    # Same names as a ResNet-50, grouped 3x3 convs of other widths: the shapes are named.
    message = _refused(tmp_path, resnext.state_dict(), "torchreid", "shape mismatches")
    assert re.search(r"layer1\.0\.conv1\.weight \(128, 64, 1, 1\) where ReIDNet's layer1\.0\.conv1\.weight is "
                     r"\(64, 64, 1, 1\)", message)


def test_a_deeper_resnet_is_refused_with_its_name(tmp_path):
    state = {f"base.{k}": v for k, v in random_tensors(trunk_shapes("resnet101")).items()}
    assert "resnet101" in _refused(tmp_path, state, "bot", "only ResNet-18, -34 and -50")


def test_unknown_missing_and_misshapen_keys_are_named_in_the_tools_names(tmp_path):
    state = bot_state("resnet34")
    state["base.layer4.0.extra.weight"] = torch.ones(3)
    del state["base.layer3.1.bn2.running_var"]
    state["bottleneck.weight"] = torch.ones(256)
    message = _refused(tmp_path, state, "bot", "does not fit a ReIDNet resnet34")
    assert "keys ReIDNet has no place for: base.layer4.0.extra.weight" in message
    assert "missing keys: base.layer3.1.bn2.running_var" in message
    assert "bottleneck.weight (256,) where ReIDNet's neck.weight is (512,)" in message


def test_a_fastreid_embedding_layer_is_refused(tmp_path):
    state = fastreid_state("resnet18", bnneck=False)
    state["heads.bottleneck.0.weight"] = torch.ones(256, 512, 1, 1)  # MODEL.HEADS.EMBEDDING_DIM 256: a 1x1 conv
    _refused(tmp_path, {"model": state}, "fastreid", "embedding layer .*EMBEDDING_DIM 0")


def test_a_learnt_gem_exponent_contradicts_another_pooling(tmp_path):
    _refused(tmp_path, {"model": fastreid_state("resnet18", gem_p=3.0)}, "fastreid",
             r"learnt GeM exponent \(heads.pool_layer.p\), so --pooling avg", pooling="avg")


def test_the_wrong_tool_is_named_with_the_right_one(tmp_path):
    _refused(tmp_path, bot_state("resnet18"), "fastreid", "named as reid-strong-baseline's.*pass --from bot")
    (tmp_path / "their.pth").unlink()
    _refused(tmp_path, {"model": fastreid_state("resnet18")}, "torchreid", "pass --from fastreid")


def test_files_that_hold_no_weights_are_refused(tmp_path):
    # A pickled model runs code when loaded: refused, with the line that saves its weights.
    message = _refused(tmp_path, torch.nn.Sequential(torch.nn.Linear(2, 2)), "torchreid", "pickled Python object")
    assert "torch.nn.modules.container.Sequential" in message and "torch.save(model.state_dict()" in message
    (tmp_path / "their.pth").unlink()
    _refused(tmp_path, {"net": bot_state("resnet18"), "epoch": 3}, "bot", r"not tensors \(net, epoch\)")
    (tmp_path / "their.pth").unlink()
    (tmp_path / "their.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a file torch.load can read"):
        reid_prune.import_checkpoint(tmp_path / "their.pth", source="bot")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        reid_prune.import_checkpoint(tmp_path / "absent.pth", source="bot")


def test_a_reid_prune_checkpoint_is_not_imported_again(tmp_path):
    reid_prune.save_checkpoint(tmp_path / "ours.pt", reid_prune.build_model("resnet18"))
    with pytest.raises(ValueError, match="is a reid-prune checkpoint already"):
        reid_prune.import_checkpoint(tmp_path / "ours.pt", source="torchreid")


def test_bad_options_are_refused_before_the_file_is_read(tmp_path):
    missing = tmp_path / "absent.pth"  # never read: each option is refused first
    with pytest.raises(ValueError, match=r"source \(--from\): expected one of torchreid, fastreid, bot, got 'openreid'"):
        reid_prune.import_checkpoint(missing, source="openreid")
    with pytest.raises(ValueError, match=r"last_stride \(--last-stride\): expected 1 or 2, got 3"):
        reid_prune.import_checkpoint(missing, source="bot", last_stride=3)
    with pytest.raises(TypeError, match=r"import_checkpoint\(\): last_stride: expected an integer or None, got '1'"):
        reid_prune.import_checkpoint(missing, source="bot", last_stride="1")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--output"):
        reid_prune.import_checkpoint(missing, source="bot", output=tmp_path / "file" / "out.pt")


def test_numpy_numbers_beside_the_weights_are_read(tmp_path):
    # torchreid stores rank-1 as a numpy float; weights_only loading allows numpy numbers and arrays, nothing else.
    torch.save({"state_dict": bot_state("resnet18"), "rank1": np.float32(0.5), "cmc": np.arange(3.0)},
               tmp_path / "x.pth")
    assert reid_prune.import_checkpoint(tmp_path / "x.pth", source="bot").model_config["arch"] == "resnet18"
    # Files written under numpy 1 name the same constructors numpy.core.multiarray.*: rewritten so here.
    with zipfile.ZipFile(tmp_path / "x.pth") as src, zipfile.ZipFile(tmp_path / "numpy1.pth", "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, data)
    assert reid_prune.import_checkpoint(tmp_path / "numpy1.pth", source="bot").model_config["arch"] == "resnet18"


def test_the_printed_config_keys_are_those_eval_checks():
    assert CONFIG_KEYS == ARCHITECTURE_KEYS


# ---------------------------------------------------------------- an imported model through the command line

def torchreid_file(path: Path) -> Path:
    """A torchreid ResNet-18 checkpoint as its engine writes it: torchvision's trunk names, a classifier with a
    bias, 'module.' keys, a numpy rank-1."""
    trunk = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    state = {**trunk, "classifier.weight": torch.randn(7, 512) * 0.01, "classifier.bias": torch.zeros(7)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 60, "rank1": np.float32(0.7)},
               path)
    return path


TINY = [*TINY_RUN, "train.warmup_epochs=0", "eval.latency_batch_sizes=[1]", "prune.data_batches=2",
        "train.max_batches=3"]


def test_an_imported_model_prunes_fine_tunes_and_evaluates(tmp_path, session_cache, capsys):
    source = torchreid_file(tmp_path / "model.pth.tar-60")
    imported = tmp_path / "imported.pt"
    assert main(["import", "--from", "torchreid", str(source), "--output", str(imported)]) == 0
    printed = capsys.readouterr().out
    flags = re.search(r"^  (--set model\..*)$", printed, re.MULTILINE).group(1).split()
    assert flags == ["--set", "model.arch=resnet18", "--set", "model.last_stride=2", "--set", "model.pooling=avg",
                     "--set", "model.neck=none", "--set", "model.embedding_dim=0"]
    config = ["--config", str(REPO / "configs" / "demo.yaml"), "--quiet", *[f"--set={o}" for o in TINY]]
    # Without the printed keys the demo config (last stride 1, BNNeck) contradicts the model: refused, named.
    assert main(["eval", *config, "--checkpoint", str(imported)]) == 2
    assert "--set model.last_stride=2" in capsys.readouterr().err
    out = tmp_path / "pruned"
    assert main(["prune", *config, *flags, "--checkpoint", str(imported), "--method", "fpgm", "--rate", "0.3",
                 "--finetune-epochs", "1", "--output", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["finetuned"]["params"] < report["before"]["params"]
    # Fine-tuning trained a new classifier for the synthetic identities (the imported one was left out).
    assert reid_prune.load_model(out / "pruned.pt").classifier.out_features == 12
    capsys.readouterr()
    assert main(["eval", *config, *flags, "--checkpoint", str(out / "pruned.pt"), "--json",
                 str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["params"] == report["finetuned"]["params"] and 0 <= evaluated["mAP"] <= 100


@pytest.mark.slow
def test_an_imported_fastreid_model_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.save({"model": fastreid_state("resnet18", gem_p=3.0)}, tmp_path / "model_final.pth")
    imported = tmp_path / "imported.pt"
    assert main(["import", "--from", "fastreid", str(tmp_path / "model_final.pth"), "--output", str(imported)]) == 0
    # Its stem (a max-pool without padding, rounding up) and GeM go through ONNX with the parity check.
    assert main(["export", "--checkpoint", str(imported), "--output", str(tmp_path / "m.onnx"), "--input-size", "64",
                 "32"]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = reid_prune.load_model(imported)(images(1)).numpy()
    np.testing.assert_allclose(session.run(None, {"images": images(1).numpy()})[0], expected, rtol=1e-4, atol=1e-4)
