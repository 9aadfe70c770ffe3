from pathlib import Path

import pytest

from reid_prune.config import Config, ConfigError, config_from_dict, dump_config, load_config
from reid_prune.engine.schedule import lr_at

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=0.001", "train.milestones=[3, 5]", "prune.rate=0.3", "data.transforms.pad=0"])
    assert cfg.train.lr == 0.001 and cfg.train.milestones == [3, 5]
    assert cfg.prune.rate == 0.3 and cfg.data.transforms.pad == 0
    assert cfg.model.arch == "resnet50"  # untouched default


def test_yaml_merges_over_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  arch: resnet18\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=4"])
    assert cfg.model.arch == "resnet18" and cfg.train.epochs == 4 and cfg.train.lr == Config().train.lr


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=fast", "config key train.lr: expected a number, got 'fast'"),
        ("train.lrr=0.1", "config key train.lrr is not a valid key; did you mean train.lr?"),
        ("model.arch=resnet51", "config key model.arch: expected one of resnet18, resnet34, resnet50, got 'resnet51'"),
        ("train.epochs=2.5", "config key train.epochs: expected an integer, got 2.5"),
        ("train.amp=maybe", "config key train.amp: expected one of auto, off, bf16, fp16, got 'maybe'"),
        ("prune.rate=1.0", "config key prune.rate: a prune fraction must lie in [0, 1)"),
        ("data.transforms.mean=[1, x, 2]", "config key data.transforms.mean[1]: expected a number, got 'x'"),
        ("data.p=1", "config key data.p"),
        ("nonsense", "expected KEY=VALUE"),
        ("data.dataset=market1501", "config key data.root"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_unknown_key_in_yaml_and_bad_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  archh: resnet18\n")
    with pytest.raises(ConfigError, match="model.archh is not a valid key; did you mean model.arch"):
        load_config(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_optional_numbers_accept_null_and_ints():
    cfg = load_config(None, ["prune.target_macs=null", "prune.rate=0", "train.lr=1"])
    assert cfg.prune.target_macs is None and cfg.prune.rate == 0.0 and isinstance(cfg.train.lr, float)


def test_dump_round_trip(tmp_path):
    cfg = load_config(None, ["model.arch=resnet34", "train.milestones=[1, 2]"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load(name):
    load_config(REPO / "configs" / name)


def test_lr_schedule_warmup_and_steps():
    t = load_config(None, ["train.lr=1.0", "train.warmup_epochs=2", "train.warmup_factor=0.1",
                           "train.milestones=[4, 6]", "train.gamma=0.1", "train.epochs=8"]).train
    assert lr_at(t, 0.0) == pytest.approx(0.1)
    assert lr_at(t, 1.0) == pytest.approx(0.55)
    assert lr_at(t, 2.0) == pytest.approx(1.0)
    assert lr_at(t, 4.5) == pytest.approx(0.1)
    assert lr_at(t, 6.0) == pytest.approx(0.01)
    c = load_config(None, ["train.lr=1.0", "train.warmup_epochs=0", "train.scheduler=cosine", "train.epochs=10"]).train
    assert lr_at(c, 0) == pytest.approx(1.0) and lr_at(c, 5) == pytest.approx(0.5) and lr_at(c, 10) == pytest.approx(0.0)
