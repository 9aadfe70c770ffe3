"""Channel groups found by tracing: counts, contents, filters and unsupported layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reid_prune import build_model
from reid_prune.pruners.groups import ChannelGroup, find_channel_groups

BLOCKS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}


def _by_name(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {g.name: g for g in groups}


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_internal_groups_are_the_non_residual_convs_of_each_block(arch):
    model = build_model(arch, num_classes=5)
    groups = find_channel_groups(model)
    per_block = ["conv1", "conv2"] if arch == "resnet50" else ["conv1"]
    blocks = [f"layer{stage + 1}.{b}" for stage, n in enumerate(BLOCKS[arch]) for b in range(n)]
    expected = [f"{block}.{conv}" for block in blocks for conv in per_block]
    assert [g.name for g in groups] == expected
    for g in groups:
        block, conv = g.name.rsplit(".", 1)
        following = {"conv1": "conv2", "conv2": "conv3"}[conv]
        assert g.kind == "internal"
        assert g.producers == [g.name]
        assert g.norms == [f"{block}.bn{conv[-1]}"]
        assert g.consumers == [f"{block}.{following}"]
        assert g.channels == model.get_submodule(g.name).out_channels
        assert g.stage == block.split(".")[0]
        assert not (g.is_stem or g.has_downsample or g.is_last_stage)


def test_resnet18_stem_and_layer1_share_one_stream():
    model = build_model("resnet18")
    streams = [g for g in find_channel_groups(model, scope="all", include_last_stage=True) if g.kind == "stream"]
    assert [g.name for g in streams] == ["stream.stem+layer1", "stream.layer2", "stream.layer3", "stream.layer4"]
    stem = streams[0]
    assert stem.producers == ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    assert stem.norms == ["bn1", "layer1.0.bn2", "layer1.1.bn2"]
    assert stem.consumers == ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"]
    assert stem.is_stem and not stem.has_downsample and not stem.is_last_stage
    layer2 = streams[1]
    assert layer2.producers == ["layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2"]
    assert layer2.norms == ["layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2"]
    assert layer2.has_downsample and layer2.channels == 128
    # The last stage ends in the BNNeck, which normalises the same channels.
    assert streams[3].norms[-1] == "neck" and streams[3].is_last_stage


def test_resnet50_stem_is_its_own_group_and_every_conv_is_produced_once():
    model = build_model("resnet50", num_classes=5)
    groups = find_channel_groups(model, scope="all", include_last_stage=True)
    streams = _by_name([g for g in groups if g.kind == "stream"])
    assert list(streams) == ["stream.stem", "stream.layer1", "stream.layer2", "stream.layer3", "stream.layer4"]
    stem = streams["stream.stem"]
    assert (stem.producers, stem.norms) == (["conv1"], ["bn1"])
    assert stem.consumers == ["layer1.0.conv1", "layer1.0.downsample.0"]
    layer4 = streams["stream.layer4"]
    assert layer4.channels == 2048
    assert layer4.producers == ["layer4.0.conv3", "layer4.0.downsample.0", "layer4.1.conv3", "layer4.2.conv3"]
    assert layer4.consumers == ["layer4.1.conv1", "layer4.2.conv1", "classifier"]
    assert layer4.norms[-1] == "neck"
    # Brute-force coverage: each conv writes exactly one group, each BN belongs to one group.
    produced = [p for g in groups for p in g.producers]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(produced) == sorted(convs)
    norms = [n for g in groups for n in g.norms]
    all_norms = [n for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert sorted(norms) == sorted(all_norms)
    # The classifier's outputs are identities: never a group.
    assert all("classifier" not in g.producers for g in groups)


def test_embedding_output_is_a_last_stage_group():
    model = build_model("resnet18", embedding_dim=32, num_classes=5, pooling="gem")
    groups = _by_name(find_channel_groups(model, scope="all", include_last_stage=True))
    embedding = groups["stream.embedding"]
    assert (embedding.producers, embedding.norms, embedding.consumers) == (
        ["embedding.0"], ["embedding.1", "neck"], ["classifier"])
    assert embedding.channels == 32 and embedding.is_last_stage and embedding.stage == "embedding"
    layer4 = groups["stream.layer4"]
    assert layer4.consumers[-1] == "embedding.0" and layer4.is_last_stage
    default = _by_name(find_channel_groups(model, scope="all"))
    assert "stream.embedding" not in default and "stream.layer4" not in default


def test_filters_select_stream_groups_and_names_do_not_depend_on_them():
    model = build_model("resnet50")
    everything = _by_name(find_channel_groups(model, scope="all", include_last_stage=True))
    cases = {
        (True, True, False): {"stream.stem", "stream.layer1", "stream.layer2", "stream.layer3"},
        (False, True, False): {"stream.layer1", "stream.layer2", "stream.layer3"},
        (True, False, True): {"stream.stem"},  # every ResNet-50 stage stream has a shortcut conv
        (False, False, False): set(),
    }
    for (stem, downsample, last), streams in cases.items():
        groups = find_channel_groups(model, scope="all", include_stem=stem, include_downsample=downsample,
                                     include_last_stage=last)
        assert {g.name for g in groups if g.kind == "stream"} == streams
        assert len([g for g in groups if g.kind == "internal"]) == 32
        assert all(everything[g.name] == g for g in groups)
    internal_only = find_channel_groups(model, scope="internal", include_last_stage=True)
    assert all(g.kind == "internal" for g in internal_only)


@pytest.mark.parametrize("arch, internal, streams", [("resnet18", 8, 4), ("resnet34", 16, 4), ("resnet50", 32, 5)])
def test_group_counts(arch, internal, streams):
    model = build_model(arch, neck="none")
    assert len(find_channel_groups(model, scope="internal")) == internal
    assert len(find_channel_groups(model, scope="all")) == internal + streams - 1
    assert len(find_channel_groups(model, scope="all", include_last_stage=True)) == internal + streams


def test_invalid_scope_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'internal', 'all'.*'everything'"):
        find_channel_groups(build_model("resnet18"), scope="everything")


def test_tracing_leaves_modes_and_statistics_alone():
    model = build_model("resnet18", num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_channel_groups(model, scope="all")
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 1)
        self.c = nn.Conv2d(9, 6, 1)
        self.d = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.d(torch.relu(self.c(torch.cat([self.a(x), self.b(x)], dim=1))))


def test_unknown_op_leaves_its_channels_whole_with_a_warning():
    with pytest.warns(UserWarning) as record:
        groups = find_channel_groups(_Concat(), scope="all", include_last_stage=True)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert messages[0].startswith("channels produced by ['a'] are left unpruned: it is read by 'cat'")
    assert messages[1].startswith("channels produced by ['b'] are left unpruned: it is read by 'cat'")
    # a and b feed the concat; c's output (read by d) is still prunable, d's reaches the output.
    assert [(g.name, g.producers, g.consumers) for g in groups] == [
        ("stream.c", ["c"], ["d"]), ("stream.d", ["d"], [])]


class _Flat(nn.Module):
    """A flatten that folds space into channels must stop the group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=8)
        self.fc = nn.Linear(4 * 8 * 4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


def test_flatten_that_mixes_space_into_channels_blocks_the_group():
    with pytest.warns(UserWarning, match="turns its 4 channels into 128"):
        groups = find_channel_groups(_Flat(), scope="all", include_last_stage=True)
    assert [g.name for g in groups] == ["stream.fc"]


def test_grouped_convolutions_are_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(NotImplementedError, match="grouped/depthwise"):
        find_channel_groups(model)
