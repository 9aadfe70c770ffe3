"""Checkpoints: round trips of full and pruned-width models, atomic writes, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reid_prune import checkpoint
from reid_prune.backbone import build_model
from reid_prune.checkpoint import apply_widths, atomic_save, load_model, module_widths, read_checkpoint, save_checkpoint

CONFIG = {"arch": "resnet18", "last_stride": 1, "embedding_dim": 32, "num_classes": 6}


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 32, generator=torch.Generator().manual_seed(1))


def trained_looking_model() -> nn.Module:
    model = build_model(**CONFIG)
    with torch.no_grad():
        model(images(4))  # train mode: BN running statistics move off their defaults
    return model.eval()


def outputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return (model(images()), *model(images(), with_logits=True))


def assert_same_outputs(a: nn.Module, b: nn.Module) -> None:
    for out_a, out_b in zip(outputs(a), outputs(b), strict=True):
        assert torch.equal(out_a, out_b)


def test_round_trip_of_full_model(tmp_path):
    model = trained_looking_model()
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, dict(CONFIG, pretrained="/some/imagenet.pth"), epoch=4)
    loaded = load_model(path)
    assert not loaded.training
    assert_same_outputs(model, loaded)
    ckpt = read_checkpoint(path)
    assert ckpt["epoch"] == 4
    # The loaded model must not go looking for the pretrained file again.
    assert ckpt["model_config"]["pretrained"] == "none"


def test_wrapped_model_is_saved_bare(tmp_path):
    model = trained_looking_model()
    path = save_checkpoint(tmp_path / "model.pt", nn.DataParallel(model), CONFIG)
    assert not any(k.startswith("module.") for k in read_checkpoint(path)["state_dict"])
    assert_same_outputs(model, load_model(path))


# Channels of layer1.0's inner conv and of the embedding kept by a (pretend) pruner.
BLOCK_KEEP = torch.tensor(sorted(torch.randperm(64, generator=torch.Generator().manual_seed(0))[:40].tolist()))
EMBED_KEEP = torch.arange(0, 32, 2)  # 16 of 32


def pruned_copy(model: nn.Module) -> nn.Module:
    """A smaller model holding ``model``'s weights for the kept channels (what surgery produces)."""
    pruned = build_model(**CONFIG)
    apply_widths(
        pruned,
        {
            "layer1.0.conv1": [40, 64],
            "layer1.0.bn1": [40],
            "layer1.0.conv2": [64, 40],
            "embedding.0": [16, 512],
            "embedding.1": [16],
            "neck": [16],
            "classifier": [6, 16],
        },
    )
    full = model.state_dict()
    sliced = dict(full)
    sliced["layer1.0.conv1.weight"] = full["layer1.0.conv1.weight"][BLOCK_KEEP]
    for name in ("weight", "bias", "running_mean", "running_var"):
        sliced[f"layer1.0.bn1.{name}"] = full[f"layer1.0.bn1.{name}"][BLOCK_KEEP]
        for bn in ("embedding.1", "neck"):
            sliced[f"{bn}.{name}"] = full[f"{bn}.{name}"][EMBED_KEEP]
    sliced["layer1.0.conv2.weight"] = full["layer1.0.conv2.weight"][:, BLOCK_KEEP]
    sliced["embedding.0.weight"] = full["embedding.0.weight"][EMBED_KEEP]
    sliced["classifier.weight"] = full["classifier.weight"][:, EMBED_KEEP]
    pruned.load_state_dict(sliced)
    return pruned.eval()


def test_pruned_copy_matches_full_model_with_channels_silenced():
    # Sanity check of the construction: zeroing the dropped BN channels of the full model
    # (ReLU then outputs 0 there) must give the pruned model's block output.
    model = trained_looking_model()
    pruned = pruned_copy(model)
    dropped = torch.ones(64, dtype=torch.bool)
    dropped[BLOCK_KEEP] = False
    with torch.no_grad():
        model.layer1[0].bn1.weight[dropped] = 0
        model.layer1[0].bn1.bias[dropped] = 0
        x = model.maxpool(model.relu(model.bn1(model.conv1(images()))))
        assert torch.allclose(model.layer1[0](x), pruned.layer1[0](x), atol=1e-5)


def test_round_trip_of_pruned_model(tmp_path):
    pruned = pruned_copy(trained_looking_model())
    path = save_checkpoint(tmp_path / "pruned.pt", pruned, CONFIG)
    loaded = load_model(path)
    assert module_widths(loaded) == module_widths(pruned)
    assert loaded.layer1[0].conv1.out_channels == 40 and loaded.neck.num_features == 16
    # The BNNeck's shift stays frozen after resizing.
    assert not loaded.neck.bias.requires_grad
    assert_same_outputs(pruned, loaded)


def test_checkpoint_reads_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "pruned.pt", pruned_copy(trained_looking_model()), CONFIG, metrics={"mAP": 1.5})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == checkpoint.FORMAT
    assert raw["widths"]["layer1.0.conv1"] == [40, 64]
    assert raw["metrics"] == {"mAP": 1.5}


def test_apply_widths_rejects_unknown_layers():
    with pytest.raises(ValueError, match="layer9.conv"):
        apply_widths(build_model("resnet18"), {"layer9.conv": [3, 3]})


def test_atomic_save_leaves_only_the_target(tmp_path):
    atomic_save({"a": torch.zeros(3)}, tmp_path / "file.pt")
    atomic_save({"a": torch.ones(3)}, tmp_path / "file.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["file.pt"]
    assert torch.equal(torch.load(tmp_path / "file.pt")["a"], torch.ones(3))


def test_failed_save_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(path, trained_looking_model(), CONFIG, epoch=1)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial")  # a half-written file, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, trained_looking_model(), CONFIG, epoch=2)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert path.read_bytes() == before


def test_read_checkpoint_rejects_foreign_files(tmp_path):
    plain = tmp_path / "plain_state_dict.pth"
    torch.save(build_model("resnet18").state_dict(), plain)
    with pytest.raises(ValueError, match="not a reid-prune checkpoint.*model.pretrained"):
        read_checkpoint(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a readable reid-prune checkpoint .*pass a best.pt"):
        load_model(garbage)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "absent.pt")
