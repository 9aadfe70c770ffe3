"""Imported models compute the features their own tool computes (to 1e-5, eval mode, 64x32 images).

torchreid (the ``interop`` extra): its own ``build_model`` makes the model, its own ``save_checkpoint``
writes the file (a ``{'state_dict', 'epoch', 'rank1', 'optimizer'}`` dict with ``module.`` keys and a
numpy rank-1), and its own forward gives the reference features.

fast-reid and reid-strong-baseline do not install here: fastreid 1.4.0 pins torch 1.13.1, and
reid-strong-baseline is not a package. Their files are built from the naming in their own code
(JDAI-CV/fast-reid ``fastreid/modeling/backbones/resnet.py`` and ``modeling/heads/embedding_head.py``;
michuanhaohao/reid-strong-baseline ``modeling/backbones/resnet.py`` and ``modeling/baseline.py``), and
the reference features by :func:`reference_features`, a transcription of their forward passes in
``torch.nn.functional`` that uses neither torchvision nor ReIDNet: fast-reid's max-pool without padding
and rounding up, reid-strong-baseline's stem without ReLU, GeM, the BNNeck. Where fast-reid's model code
imports (``fastreid.modeling``), a further test checks the import against its own ``Baseline``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reid_prune
from reid_prune import import_checkpoint, load_model

SPECS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False), "resnet50": ((3, 4, 6, 3), True),
         "resnet101": ((3, 4, 23, 3), True)}
WIDTHS = (64, 128, 256, 512)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def _bn(name: str, channels: int) -> dict[str, tuple]:
    return {f"{name}.{p}": (channels,) for p in ("weight", "bias", "running_mean", "running_var")} | {
        f"{name}.num_batches_tracked": ()}


def trunk_shapes(arch: str) -> dict[str, tuple]:
    """Name and shape of every trunk weight of a ResNet, in the names the three tools share (torchvision's)."""
    blocks, bottleneck = SPECS[arch]
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    inplanes = 64
    for stage, (count, planes) in enumerate(zip(blocks, WIDTHS), 1):
        out = planes * 4 if bottleneck else planes
        for i in range(count):
            name = f"layer{stage}.{i}"
            convs = ([(planes, inplanes, 1), (planes, planes, 3), (out, planes, 1)] if bottleneck
                     else [(planes, inplanes, 3), (planes, planes, 3)])
            for k, (o, c, size) in enumerate(convs, 1):
                shapes[f"{name}.conv{k}.weight"] = (o, c, size, size)
                shapes.update(_bn(f"{name}.bn{k}", o))
            if i == 0 and inplanes != out:
                shapes[f"{name}.downsample.0.weight"] = (out, inplanes, 1, 1)
                shapes.update(_bn(f"{name}.downsample.1", out))
            inplanes = out
    return shapes


def random_tensors(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Trained-looking weights: He-scaled convs, BatchNorms with scales, shifts and running statistics off 1 and 0."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7)
        elif len(shape) > 1:
            fan_in = math.prod(shape[1:])
            state[name] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith(("running_mean", "bias")):
            state[name] = torch.randn(shape, generator=g) * 0.1
        else:
            state[name] = torch.rand(shape, generator=g) * 0.5 + 0.5
    return state


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every 1-d tensor of ``model`` (BatchNorms, biases) values off its initialisation, in place."""
    fresh = random_tensors({k: tuple(v.shape) for k, v in model.state_dict().items() if v.dim() == 1}, seed)
    with torch.no_grad():
        for name, value in fresh.items():
            model.state_dict()[name].copy_(value)
    return model


def _batch_norm(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    key = (lambda p: f"{name}.{p}") if name else (lambda p: p)
    return F.batch_norm(x, sd[key("running_mean")], sd[key("running_var")], sd[key("weight")], sd[key("bias")],
                        False, 0.0, 1e-5)


def _block(x: torch.Tensor, sd: dict, name: str, stride: int, bottleneck: bool) -> torch.Tensor:
    if bottleneck:  # the stride on the 3x3 conv (ResNet v1.5), as in all three tools
        out = F.relu(_batch_norm(F.conv2d(x, sd[f"{name}.conv1.weight"]), sd, f"{name}.bn1"))
        out = F.conv2d(out, sd[f"{name}.conv2.weight"], stride=stride, padding=1)
        out = F.relu(_batch_norm(out, sd, f"{name}.bn2"))
        out = _batch_norm(F.conv2d(out, sd[f"{name}.conv3.weight"]), sd, f"{name}.bn3")
    else:
        out = F.relu(_batch_norm(F.conv2d(x, sd[f"{name}.conv1.weight"], stride=stride, padding=1), sd, f"{name}.bn1"))
        out = _batch_norm(F.conv2d(out, sd[f"{name}.conv2.weight"], padding=1), sd, f"{name}.bn2")
    if f"{name}.downsample.0.weight" in sd:
        x = _batch_norm(F.conv2d(x, sd[f"{name}.downsample.0.weight"], stride=stride), sd, f"{name}.downsample.1")
    return F.relu(out + x)


def reference_features(x: torch.Tensor, trunk: dict, arch: str, *, last_stride: int, stem_relu: bool,
                       ceil_pool: bool, pooling: str = "avg", gem_p: torch.Tensor | None = None,
                       neck: dict | None = None) -> torch.Tensor:
    """The evaluation-mode feature of a ResNet re-ID model, from its weights alone.

    ``trunk`` in torchvision's names; ``neck``: a BNNeck's {weight, bias, running_mean, running_var}.
    """
    blocks, bottleneck = SPECS[arch]
    x = _batch_norm(F.conv2d(x, trunk["conv1.weight"], stride=2, padding=3), trunk, "bn1")
    if stem_relu:
        x = F.relu(x)
    x = F.max_pool2d(x, 3, 2, padding=0 if ceil_pool else 1, ceil_mode=ceil_pool)
    for stage, count in enumerate(blocks, 1):
        for i in range(count):
            stride = 1 if i > 0 or stage == 1 else (last_stride if stage == 4 else 2)
            x = _block(x, trunk, f"layer{stage}.{i}", stride, bottleneck)
    if pooling == "gem":
        feat = x.clamp(min=1e-6).pow(gem_p).mean((2, 3)).pow(1.0 / gem_p)
    else:
        feat = x.mean((2, 3)) if pooling == "avg" else x.amax((2, 3))
    if neck is not None:
        feat = _batch_norm(feat, neck, "")
    return feat


def _prefixed(prefix: str, state: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in state.items()}


def _neck(seed: int, channels: int) -> dict:
    return {k.lstrip("."): v for k, v in random_tensors(_bn("", channels), seed).items()}


def _features_after_round_trip(imported, path) -> torch.Tensor:
    """The features of the checkpoint the import wrote, loaded back as any reid-prune checkpoint."""
    with torch.no_grad():
        return load_model(path)(images())


# ---------------------------------------------------------------- torchreid: its own model, file and features

TORCHREID_CASES = [("resnet18", "bare"), ("resnet34", "engine"), ("resnet50", "engine"), ("resnet50_fc512", "engine")]


@pytest.mark.parametrize("name, container", TORCHREID_CASES)
def test_torchreid_model_imports_with_its_own_features(tmp_path, name, container):
    torchreid = pytest.importorskip("torchreid")
    model = randomize_(torchreid.models.build_model(name, num_classes=9, loss="softmax", pretrained=False), seed=1)
    wrapped = torch.nn.DataParallel(model)  # the engine trains wrapped: keys start with 'module.'
    if container == "bare":  # a model-zoo file: the state_dict alone
        path = tmp_path / f"{name}.pth"
        torch.save(model.state_dict(), path)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torchreid.utils.save_checkpoint({"state_dict": wrapped.state_dict(), "epoch": 3, "rank1": np.float32(0.41),
                                         "optimizer": optimizer.state_dict()}, str(tmp_path))
        path = tmp_path / "model.pth.tar-3"
    imported = import_checkpoint(path, source="torchreid", output=tmp_path / "imported.pt")
    with torch.no_grad():
        theirs = model.eval()(images())
        ours = imported.model(images())
    torch.testing.assert_close(ours, theirs, **TOLERANCE)
    torch.testing.assert_close(_features_after_round_trip(imported, tmp_path / "imported.pt"), theirs, **TOLERANCE)
    fc = name.endswith("fc512")
    assert imported.model_config["last_stride"] == (1 if fc else 2)  # torchreid's: 2, and 1 for resnet50_fc512
    assert imported.model_config["embedding_dim"] == (512 if fc else 0)
    assert ("module." in imported.container) == (container == "engine")
    assert any("classifier" in note and "bias" in note for note in imported.notes)


# ---------------------------------------------------------------- fast-reid: built from its naming

def fastreid_state(arch: str, *, bnneck: bool = True, gem_p: float | None = None, classes: int = 9,
                   pixel_stats: bool = False, seed: int = 0) -> dict:
    """A fast-reid Baseline's state_dict: ``backbone.`` trunk, ``heads.bottleneck.0`` BNNeck, ``heads.weight``."""
    state = _prefixed("backbone.", random_tensors(trunk_shapes(arch), seed))
    channels = 2048 if SPECS[arch][1] else 512
    if bnneck:
        state |= _prefixed("heads.bottleneck.0.", _neck(seed + 1, channels))
    if gem_p is not None:
        state["heads.pool_layer.p"] = torch.tensor([gem_p])  # GeneralizedMeanPoolingP: nn.Parameter(ones(1) * norm)
    state["heads.weight"] = torch.randn(classes, channels) * 0.01
    if pixel_stats:  # buffers of fast-reid versions before they were made non-persistent
        state["pixel_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        state["pixel_std"] = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    return state


def _unprefixed(prefix: str, state: dict) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


FASTREID_CASES = [  # arch, BNNeck, learnt GeM p, --pooling, old pixel buffers
    ("resnet18", True, None, None, False),
    ("resnet34", True, 3.7, None, True),
    ("resnet50", True, 3.2, None, False),
    ("resnet50", False, None, "max", False),
]


@pytest.mark.parametrize("arch, bnneck, p, pooling, pixel_stats", FASTREID_CASES)
def test_fastreid_layout_imports_with_its_features(tmp_path, arch, bnneck, p, pooling, pixel_stats):
    state = fastreid_state(arch, bnneck=bnneck, gem_p=p, pixel_stats=pixel_stats, seed=3)
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 1200, "optimizer": {}}, path)  # fast-reid's Checkpointer
    imported = import_checkpoint(path, source="fastreid", output=tmp_path / "imported.pt", pooling=pooling)
    used = pooling or ("gem" if p is not None else "avg")
    neck = _unprefixed("heads.bottleneck.0.", state) if bnneck else None
    expected = reference_features(images(), _unprefixed("backbone.", state), arch, last_stride=1, stem_relu=True,
                                  ceil_pool=True, pooling=used, gem_p=state.get("heads.pool_layer.p"), neck=neck)
    with torch.no_grad():
        ours = imported.model(images())
    torch.testing.assert_close(ours, expected, **TOLERANCE)
    torch.testing.assert_close(_features_after_round_trip(imported, tmp_path / "imported.pt"), expected, **TOLERANCE)
    assert imported.model_config["num_classes"] == 9  # heads.weight kept: fast-reid's classifier has no bias
    torch.testing.assert_close(imported.model.classifier.weight, state["heads.weight"])
    # The test can fail: torchvision's max-pool (padding 1, rounding down) gives other features.
    padded = reference_features(images(), _unprefixed("backbone.", state), arch, last_stride=1, stem_relu=True,
                                ceil_pool=False, pooling=used, gem_p=state.get("heads.pool_layer.p"), neck=neck)
    assert not torch.allclose(ours, padded, **TOLERANCE)


def test_fastreid_own_baseline_imports_with_its_features(tmp_path):
    """fast-reid's own model, where its code imports (not in CI: fastreid 1.4.0 pins torch 1.13.1)."""
    pytest.importorskip("fastreid.modeling")
    from fastreid.config import get_cfg
    from fastreid.modeling import build_model as fastreid_model

    cfg = get_cfg()
    cfg.MODEL.DEVICE, cfg.MODEL.BACKBONE.PRETRAIN, cfg.MODEL.BACKBONE.DEPTH = "cpu", False, "50x"
    cfg.MODEL.HEADS.NUM_CLASSES, cfg.MODEL.HEADS.POOL_LAYER = 9, "GeneralizedMeanPoolingP"
    model = randomize_(fastreid_model(cfg), seed=2).eval()
    torch.save({"model": model.state_dict(), "iteration": 10}, tmp_path / "model_final.pth")
    imported = import_checkpoint(tmp_path / "model_final.pth", source="fastreid")
    model.pixel_mean.zero_(), model.pixel_std.fill_(1.0)  # it normalises inside; give both the same input
    with torch.no_grad():
        torch.testing.assert_close(imported.model(images()), model(images()), **TOLERANCE)


# ---------------------------------------------------------------- reid-strong-baseline: built from its naming

def bot_state(arch: str, *, bnneck: bool = True, classes: int = 9, seed: int = 0) -> dict:
    """A reid-strong-baseline Baseline's state_dict: ``base.`` trunk, ``bottleneck`` BNNeck, ``classifier``."""
    state = _prefixed("base.", random_tensors(trunk_shapes(arch), seed))
    channels = 2048 if SPECS[arch][1] else 512
    if bnneck:
        state |= _prefixed("bottleneck.", _neck(seed + 1, channels))
        state["classifier.weight"] = torch.randn(classes, channels) * 0.001  # Linear(..., bias=False)
    else:
        state["classifier.weight"] = torch.randn(classes, channels) * 0.001
        state["classifier.bias"] = torch.zeros(classes)
    return state


@pytest.mark.parametrize("arch, bnneck", [("resnet18", True), ("resnet34", False), ("resnet50", True)])
def test_bot_layout_imports_with_its_features(tmp_path, arch, bnneck):
    state = bot_state(arch, bnneck=bnneck, seed=5)
    path = tmp_path / "resnet50_model_120.pth"
    torch.save(state, path)  # its checkpoints hold the state_dict alone (load_param iterates its keys)
    imported = import_checkpoint(path, source="bot", output=tmp_path / "imported.pt")
    neck = _unprefixed("bottleneck.", state) if bnneck else None
    expected = reference_features(images(), _unprefixed("base.", state), arch, last_stride=1, stem_relu=False,
                                  ceil_pool=False, neck=neck)
    with torch.no_grad():
        ours = imported.model(images())
    torch.testing.assert_close(ours, expected, **TOLERANCE)
    torch.testing.assert_close(_features_after_round_trip(imported, tmp_path / "imported.pt"), expected, **TOLERANCE)
    assert imported.model_config["num_classes"] == (9 if bnneck else 0)  # a classifier with a bias is left out
    # The test can fail: the stem's ReLU, which reid-strong-baseline's ResNet leaves out, changes the features.
    with_relu = reference_features(images(), _unprefixed("base.", state), arch, last_stride=1, stem_relu=True,
                                   ceil_pool=False, neck=neck)
    assert not torch.allclose(ours, with_relu, **TOLERANCE)


def test_last_stride_and_pooling_can_be_given(tmp_path):
    state = bot_state("resnet18", seed=6)
    torch.save(state, tmp_path / "bot.pth")
    imported = import_checkpoint(tmp_path / "bot.pth", source="bot", last_stride=2, pooling="gem")
    expected = reference_features(images(), _unprefixed("base.", state), "resnet18", last_stride=2, stem_relu=False,
                                  ceil_pool=False, pooling="gem", gem_p=torch.tensor(3.0),
                                  neck=_unprefixed("bottleneck.", state))
    with torch.no_grad():
        torch.testing.assert_close(imported.model(images()), expected, **TOLERANCE)
    assert not any(note.startswith("last stride") for note in imported.notes)  # given, not assumed
    assert any("GeM exponent p = 3" in note for note in imported.notes)


@pytest.mark.parametrize("source", ["bot", "fastreid"])
def test_a_pruned_import_keeps_its_stem_when_reloaded(tmp_path, source):
    state = bot_state("resnet18") if source == "bot" else {"model": fastreid_state("resnet18", gem_p=3.0)}
    torch.save(state, tmp_path / "their.pth")
    imported = import_checkpoint(tmp_path / "their.pth", source=source)
    small = reid_prune.prune(imported.model, "fpgm", target_macs=0.5, scope="all", input_size=(64, 32))
    reid_prune.save_checkpoint(tmp_path / "small.pt", small)
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "small.pt")(images()), small.eval()(images()), **TOLERANCE)
