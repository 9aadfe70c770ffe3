"""`reid-prune export`: ONNX of unpruned and pruned ResNet-18 matches PyTorch under onnxruntime.

The parity tests need the optional extra (``pip install 'reid-prune[export]'``) and
skip without it; the message for a missing extra is tested either way.
"""

import copy
import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import reid_prune
from reid_prune import build_model, load_model, save_checkpoint
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.jobs.export import EXPORT_PACKAGES, export_checkpoint, export_onnx
from reid_prune.precision import ComputeSettings, resolve_precision

needs_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in EXPORT_PACKAGES),
    reason="the export extra (onnx, onnxruntime, onnxscript) is not installed",
)
SIZE = (64, 32)


def _checkpoint(path, scope=None):
    """ResNet-18, pruned by 30% with HaoLi at ``scope`` unless None; the stored config says 64x32 inputs."""
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    with torch.no_grad():  # non-trivial BN statistics, so the exported graph must fold them correctly
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    if scope is not None:
        model = reid_prune.prune(model, "haoli", rate=0.3, scope=scope, input_size=SIZE)
    config = load_config(None, [f"data.height={SIZE[0]}", f"data.width={SIZE[1]}"]).to_dict()
    save_checkpoint(path, model, config=config)
    return path


def _onnxruntime_features(path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["features"], {"images": images.numpy()})[0]


@pytest.fixture(scope="module")
def unpruned_onnx_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_full")
    return export_checkpoint(_checkpoint(folder / "full.pt"), folder / "full.onnx", latency=False)["size_bytes"]


@pytest.mark.slow
@needs_extra
@pytest.mark.parametrize("scope", [None, "internal", "all"], ids=["unpruned", "pruned-internal", "pruned-all"])
def test_parity_unpruned_and_pruned(tmp_path, scope, unpruned_onnx_bytes):
    ckpt = _checkpoint(tmp_path / "model.pt", scope)
    report = export_checkpoint(ckpt, tmp_path / "model.onnx", latency=False)
    assert report["input_size"] == SIZE  # from the checkpoint's config
    assert report["parity"]["random"] < 1e-4 and report["parity"]["images"] is None
    assert report["size_bytes"] == (tmp_path / "model.onnx").stat().st_size
    # Checked here again, independently of the exporter's own check.
    model = load_model(ckpt)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = model(x).numpy()
    actual = _onnxruntime_features(tmp_path / "model.onnx", x)
    assert actual.shape == expected.shape == (1, model.neck.num_features)
    assert np.abs(actual - expected).max() < 1e-4
    if scope is not None:  # channels are really gone from the exported graph
        assert report["size_bytes"] < 0.8 * unpruned_onnx_bytes


@needs_extra
def test_cli_dynamic_batch_real_images_and_latency(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "model.pt", "all")
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out" / "model.onnx"
    code = main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out), "--input-size", "64",
                 "32", "--dynamic-batch", "--images", str(images), "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "parity, real images (3)" in printed and "onnxruntime" in printed and "PyTorch" in printed
    assert "file size" in printed and "B free" in printed
    assert "PyTorch fp32 channels_last" in printed and "onnxruntime fp32" in printed
    assert ("PyTorch bf16 autocast" in printed) == (resolve_precision("auto", "cpu") == "bf16")
    x = torch.randn(3, 3, *SIZE)
    with torch.no_grad():
        expected = load_model(ckpt)(x).numpy()
    assert np.abs(_onnxruntime_features(out, x) - expected).max() < 1e-4
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]


@needs_extra
def test_channels_last_model_exports_as_fp32_nchw_graph(tmp_path):
    """A model placed channels-last (as training and evaluation leave it) exports with the same parity."""
    model = load_model(_checkpoint(tmp_path / "model.pt", "all"))
    reference = copy.deepcopy(model)
    ComputeSettings.resolve("cpu", "off", True).place(model)
    export_onnx(model, tmp_path / "cl.onnx", input_size=SIZE)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        expected = reference(x).numpy()
    assert np.abs(_onnxruntime_features(tmp_path / "cl.onnx", x) - expected).max() < 1e-4


@needs_extra
def test_failed_parity_writes_nothing(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "model.pt")
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(out), "--tolerance", "1e-30"]) == 1
    assert "parity check failed" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_missing_extra_says_how_to_install(tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, build_model("resnet18"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "not installed: onnxruntime" in err and "pip install 'reid-prune[export]'" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("tolerance", ["nan", "-1", "0"])
def test_export_refuses_a_tolerance_that_is_no_check(tolerance, capsys):
    from reid_prune.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["export", "--checkpoint", "x.pt", "--output", "x.onnx", "--tolerance", tolerance])
    assert exit_.value.code == 2 and "--tolerance: must be a finite number > 0" in capsys.readouterr().err
