"""ReIDNet shapes, options, the shared-weight (Siamese) embedding and pretrained trunk loading."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torchvision.models import resnet as tv_resnet

from reid_prune.backbone import build_model

# Small person-shaped inputs keep the ResNet-50 forward fast; the final map is 2 x 1 (stride 32).
H, W = 64, 32
TRUNK_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_output_shapes(arch, dim):
    model = build_model(arch).eval()
    with torch.no_grad():
        feat = model(images())
    assert feat.shape == (2, dim)
    assert model.feature_dim == dim


def test_embedding_dim_sets_feature_size():
    model = build_model("resnet18", embedding_dim=128, num_classes=7).eval()
    with torch.no_grad():
        feat = model(images())
        metric_feat, logits = model(images(), with_logits=True)
    assert feat.shape == metric_feat.shape == (2, 128)
    assert logits.shape == (2, 7)


def test_with_logits_returns_feature_before_bnneck():
    model = build_model("resnet18", num_classes=5).eval()
    with torch.no_grad():
        retrieval = model(images())
        metric_feat, logits = model(images(), with_logits=True)
    assert metric_feat.shape == (2, 512) and logits.shape == (2, 5)
    with torch.no_grad():
        assert torch.allclose(retrieval, model.neck(metric_feat))
        assert torch.allclose(logits, model.classifier(retrieval))


def test_without_classifier_logits_are_none():
    model = build_model("resnet18").eval()
    with torch.no_grad():
        feat, logits = model(images(), with_logits=True)
    assert feat.shape == (2, 512) and logits is None


def test_neck_none_returns_pooled_feature():
    model = build_model("resnet18", neck="none").eval()
    assert model.neck is None
    with torch.no_grad():
        assert torch.equal(model(images()), model(images(), with_logits=True)[0])


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_poolings(pooling):
    model = build_model("resnet18", pooling=pooling).eval()
    with torch.no_grad():
        assert model(images()).shape == (2, 512)


def test_gem_with_p_one_is_average_pooling():
    x = torch.rand(2, 4, 3, 5)
    gem = build_model("resnet18", pooling="gem").pool
    with torch.no_grad():
        gem.p.fill_(1.0)
    assert torch.allclose(gem(x), x.mean(dim=(2, 3), keepdim=True), atol=1e-6)


def final_map_size(model) -> tuple[int, int]:
    sizes = []
    handle = model.layer4.register_forward_hook(lambda module, args, out: sizes.append(tuple(out.shape[2:])))
    with torch.no_grad():
        model(images())
    handle.remove()
    return sizes[0]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_last_stride_one_doubles_final_map(arch):
    h2, w2 = final_map_size(build_model(arch, last_stride=2).eval())
    h1, w1 = final_map_size(build_model(arch, last_stride=1).eval())
    assert (h2, w2) == (H // 32, W // 32)
    assert (h1, w1) == (2 * h2, 2 * w2)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"arch": "resnet101"}, "model.arch"),
        ({"pooling": "median"}, "model.pooling"),
        ({"neck": "layernorm"}, "model.neck"),
        ({"last_stride": 3}, "model.last_stride"),
        ({"embedding_dim": -1}, "model.embedding_dim"),
    ],
)
def test_invalid_options_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        build_model(**{"arch": "resnet18", **kwargs})


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_one_network_embeds_anchor_positive_negative(arch):
    # Siamese design: one set of weights; in eval mode embedding the triplet as one
    # batch must give what three separate passes give, up to float32 rounding. The kernels
    # for a batch of 3 and of 1 may sum in another order: after ResNet-50's 50 layers that
    # moved a feature of magnitude 18 by 1.4e-5 on an AMD EPYC, so the tolerance scales
    # with the features (1e-5 of the largest); another weight set differs by O(1).
    model = build_model(arch, embedding_dim=64).eval()
    anchor, positive, negative = images(1, seed=1), images(1, seed=2), images(1, seed=3)
    with torch.no_grad():
        together = model(torch.cat([anchor, positive, negative]))
        separately = torch.cat([model(anchor), model(positive), model(negative)])
    assert torch.allclose(together, separately, atol=1e-5 * separately.abs().max().item())


def torchvision_state_dict(arch: str = "resnet18", seed: int = 123) -> dict[str, torch.Tensor]:
    """A torchvision-format state_dict, fc.* included, with trained-looking BN statistics."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():
        net(images(2, seed=seed))  # train mode: moves running stats away from their initial values
    return net.state_dict()


def assert_trunk_loaded(model, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    trunk = [k for k in own if k.startswith(TRUNK_PREFIXES)]
    assert trunk and set(trunk) == {k for k in state if not k.startswith("fc.")}
    for key in trunk:
        assert torch.equal(own[key], state[key]), key
    assert not any(k.startswith("fc.") for k in own)


def test_pretrained_file_loads_every_trunk_tensor_and_skips_fc(tmp_path):
    state = torchvision_state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, pretrained=str(path))
    assert_trunk_loaded(model, state)
    assert model.classifier.weight.shape == (10, 512)


@pytest.mark.parametrize("wrap", ["module_prefix", "state_dict_key"])
def test_pretrained_file_wrappers_load(tmp_path, wrap):
    state = torchvision_state_dict()
    if wrap == "module_prefix":
        saved = {f"module.{k}": v for k, v in state.items()}
    else:
        saved = {"state_dict": state, "epoch": 90}
    path = tmp_path / "wrapped.pth"
    torch.save(saved, path)
    assert_trunk_loaded(build_model("resnet18", pretrained=str(path)), state)


def test_pretrained_file_without_num_batches_tracked_loads(tmp_path):
    state = torchvision_state_dict()
    path = tmp_path / "old_format.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    model = build_model("resnet18", pretrained=str(path))
    own = model.state_dict()
    loaded = [k for k in own if k.startswith(TRUNK_PREFIXES) and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(own[k], state[k]) for k in loaded)


def test_pretrained_mismatched_architecture_names_missing_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_state_dict("resnet18"), path)
    with pytest.raises(ValueError, match=r"model.pretrained.*missing \['layer1\.0\.bn3"):
        build_model("resnet50", pretrained=str(path))


def test_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        build_model("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_imagenet_offline_says_what_to_do(tmp_path, monkeypatch):
    # No network and no dependence on a hub cache: the download itself is replaced.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_resnet.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(ValueError, match="offline") as info:
        build_model("resnet18", pretrained="imagenet")
    message = str(info.value)
    assert tv_resnet.ResNet18_Weights.DEFAULT.url in message
    assert str(tmp_path / "torch_home") in message
    assert "model.pretrained" in message


def test_retrieval_feature_before_or_after_neck():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5).eval()
    with torch.no_grad():
        model.neck.running_mean.normal_()
        x = torch.randn(2, 3, 64, 32)
        pooled, _ = model(x, with_logits=True)
        after = model(x)
        model.set_retrieval_feature("before_neck")
        assert torch.equal(model(x), pooled) and not torch.allclose(after, pooled)
    assert model.build_config["retrieval_feature"] == "before_neck"
    with pytest.raises(ValueError, match="model.retrieval_feature"):
        build_model("resnet18", retrieval_feature="middle")


@pytest.mark.parametrize("arch, last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_matches_torchvision_and_survives_a_checkpoint(tmp_path, arch, last_bn):
    from reid_prune import load_model, save_checkpoint

    torch.manual_seed(0)
    ours = build_model(arch, zero_init_residual=True)
    torch.manual_seed(0)
    reference = getattr(tv_resnet, arch)(weights=None, zero_init_residual=True).state_dict()
    trunk = {k: v for k, v in ours.state_dict().items() if k.startswith(TRUNK_PREFIXES)}
    assert trunk.keys() <= reference.keys()
    assert all(torch.equal(v, reference[k]) for k, v in trunk.items())  # every other weight as torchvision draws it
    zeroed = [k for k, v in trunk.items() if k.endswith(f"{last_bn}.weight") and not v.any()]
    assert len(zeroed) == sum(len(getattr(ours, f"layer{i}")) for i in range(1, 5))
    # Only the initialisation changes: trained (here: random) scales are kept by save and load.
    with torch.no_grad():
        for name in zeroed:
            ours.get_parameter(name).normal_()
    save_checkpoint(tmp_path / "m.pt", ours, dict(ours.build_config, zero_init_residual=True))
    loaded = load_model(tmp_path / "m.pt").eval()
    assert torch.equal(loaded(images()), ours.eval()(images()))
