import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from reid_prune.bench import load_bench
from reid_prune.bench.configs import run_config
from reid_prune.cli import main
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


def test_floats_without_a_dot_are_numbers_in_files_and_set(tmp_path):
    """Issue 11: PyYAML (YAML 1.1) reads 1e-4 as a string, so --set train.lr=1e-4 was 'not a number'."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 5E-4\n  warmup_factor: +1e-2\nprune:\n  rate: .5e-1\n")
    cfg = load_config(path, ["train.momentum=9e-1", "prune.finetune_lr=1E-5"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.warmup_factor) == (1e-4, 5e-4, 1e-2)
    assert (cfg.prune.rate, cfg.train.momentum, cfg.prune.finetune_lr) == (0.05, 0.9, 1e-5)
    assert load_config(None, ["data.name=1e4x"]).data.name == "1e4x"  # not a number: stays a string
    bench = load_bench(REPO / "configs" / "bench" / "synthetic_tiny.yaml", ["base.train.lr=2e-4"])
    assert run_config(bench, bench.compare[0], bench.baselines[0], 0).train.lr == 2e-4
    assert yaml.safe_load("1e-4") == "1e-4"  # PyYAML's own loader is left as it was


@pytest.mark.parametrize("override, message", [
    ("train.lr=.nan", "config key train.lr: expected a finite number, got nan"),
    ("train.weight_decay=.inf", "config key train.weight_decay: expected a finite number, got inf"),
    ("data.transforms.mean=[0.5, -.inf, 0.5]", "config key data.transforms.mean[1]: expected a finite number"),
    ("prune.options={tolerance: .nan}", "config key prune.options.tolerance: expected a finite number, got nan"),
    ("prune.target_macs=.NaN", "config key prune.target_macs: expected a finite number, got nan"),
])
def test_non_finite_numbers_are_refused(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


RANGES = [
    ("train.gamma=-0.1", "config key train.gamma: must lie in (0, 1], got -0.1"),
    ("train.warmup_epochs=-1", "config key train.warmup_epochs: must be >= 0, got -1"),
    ("train.epochs=0", "config key train.epochs: must be >= 1, got 0"),
    ("loss.label_smoothing=1.0", "config key loss.label_smoothing: must lie in [0, 1), got 1.0"),
    ("loss.margin=-0.3", "config key loss.margin: must be >= 0, got -0.3"),
    ("prune.finetune_epochs=-2", "config key prune.finetune_epochs: must be >= 0, got -2"),
    ("train.lr=0", "config key train.lr: must be > 0, got 0.0"),
    ("train.momentum=1", "config key train.momentum: must lie in [0, 1), got 1.0"),
    ("train.weight_decay=-1e-4", "config key train.weight_decay: must be >= 0"),
    ("train.warmup_factor=0", "config key train.warmup_factor: must lie in (0, 1]"),
    ("train.milestones=[-1, 5]", "config key train.milestones[0]: must be >= 0, got -1"),
    ("train.eval_every=0", "config key train.eval_every: must be >= 1"),
    ("train.seed=-1", "config key train.seed: must lie in [0, 2147483647], got -1"),
    ("train.max_batches=-1", "config key train.max_batches: must be >= 0"),
    ("train.device=gpu", "config key train.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("data.width=0", "config key data.width: must be >= 1"),
    ("data.workers=-1", "config key data.workers: must be >= 0"),
    ("data.eval_batch_size=0", "config key data.eval_batch_size: must be >= 1"),
    ("data.transforms.flip_prob=1.5", "config key data.transforms.flip_prob: must lie in [0, 1]"),
    ("data.transforms.random_erasing=-0.1", "config key data.transforms.random_erasing: must lie in [0, 1]"),
    ("data.transforms.pad=-2", "config key data.transforms.pad: must be >= 0"),
    ("data.transforms.std=[0.2, 0, 0.2]", "config key data.transforms.std[1]: must be > 0, got 0.0"),
    ("data.transforms.mean=[0.5, 0.5]", "config key data.transforms.mean: expected one value per colour channel"),
    ("data.synthetic.images_per_camera=1", "config key data.synthetic.images_per_camera: must be >= 2"),
    ("data.synthetic.cameras=1", "config key data.synthetic.cameras: must be >= 2"),
    ("data.synthetic.ids=9990", "config key data.synthetic.ids: synthetic pids have 4 digits"),
    ("model.embedding_dim=-8", "config key model.embedding_dim: must be >= 0"),
    ("eval.latency_batch_sizes=[1, 0]", "config key eval.latency_batch_sizes[1]: must be >= 1"),
    ("eval.latency_batch_sizes=[]", "config key eval.latency_batch_sizes: give at least one batch size"),
    ("prune.finetune_lr=-0.1", "config key prune.finetune_lr: must be > 0"),
    ("prune.data_batches=0", "config key prune.data_batches: must be >= 1"),
    ("prune.target_params=0", "config key prune.target_params: a kept fraction must lie in (0, 1], got 0.0"),
    ("output=", "config key output: give the run folder"),
    ("loss.id_weight=-1", "config key loss.id_weight: must be >= 0"),
]


@pytest.mark.parametrize("override, message", RANGES, ids=[o for o, _ in RANGES])
def test_every_key_is_range_checked(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_every_numeric_key_declares_its_range():
    """The audit of issue 11 as a rule: a new number key without a declared range fails here."""
    checked_elsewhere = {"model.last_stride", "data.transforms.mean"}  # in validate(): {1, 2}; one per channel
    missing = []

    def walk(obj, prefix=""):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value, path = getattr(obj, f.name), prefix + f.name
            if dataclasses.is_dataclass(value):
                walk(value, path + ".")
            elif {hints[f.name], *typing.get_args(hints[f.name])} & {int, float, list[int], list[float]}:
                if "range" not in f.metadata and path not in checked_elsewhere:
                    missing.append(path)

    walk(Config())
    assert missing == []


def test_bad_values_stop_the_cli_before_any_file_is_written(tmp_path, capsys):
    """Issue 11: label_smoothing and margin were rejected only after config.yaml was written."""
    out = tmp_path / "run"
    for override in ("loss.label_smoothing=1.5", "loss.margin=-1", "train.epochs=0"):
        assert main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--output", str(out),
                     "--set", override]) == 2
        assert override.split("=")[0] in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(SystemExit):  # the flag is named, not the config key
        main(["prune", "--config", str(REPO / "configs" / "demo.yaml"), "--checkpoint", "x.pt",
              "--finetune-epochs", "-1"])
    assert "argument --finetune-epochs: must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n"])
def test_empty_config_file_is_refused(tmp_path, capsys, text):
    """Issue 11: an empty file silently trained ResNet-50 at 256x128 for 120 epochs."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is empty; write the keys you mean"):
        load_config(path)
    assert main(["train", "--config", str(path), "--output", str(tmp_path / "run")]) == 2
    assert "is empty" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_triplet_only_training_needs_two_images_per_identity(tmp_path, capsys):
    """Issue 11: with only the triplet loss and data.k=1 the loss was exactly 0 and nothing trained."""
    with pytest.raises(ConfigError, match="config key data.k: with only the triplet loss, data.k must be at least 2"):
        load_config(None, ["data.k=1", "loss.id_weight=0"])
    with pytest.raises(ConfigError, match="config key loss.id_weight: nothing to train"):
        load_config(None, ["loss.triplet=none", "loss.id_weight=0"])
    with pytest.warns(UserWarning, match="data.k=1: no batch holds a positive pair"):
        load_config(None, ["data.k=1", "loss.id_weight=1"])  # the identity loss carries the training
    assert main(["train", "--config", str(REPO / "configs" / "demo.yaml"), "--output", str(tmp_path / "run"),
                 "--set", "data.k=1", "--set", "loss.id_weight=0"]) == 2
    assert "data.k must be at least 2" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_key_given_twice_in_a_file_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="is not valid YAML: .*the key 'lr' is given twice"):
        load_config(path)


def test_yaml_spellings_users_write():
    # check_images: off (YAML reads it as false); a sign before the dot.
    cfg = load_config(None, ["data.check_images=off", "train.lr=+.5", "train.warmup_factor=.5"])
    assert cfg.data.check_images == "off" and cfg.train.lr == 0.5 and cfg.train.warmup_factor == 0.5
    assert load_config(None, ["train.momentum=+.9"]).train.momentum == 0.9
    with pytest.raises(ConfigError, match="config key loss.margin: must be >= 0, got -0.5"):  # a number, then range
        load_config(None, ["loss.margin=-.5"])


def test_an_unavailable_device_is_refused_up_front():
    import torch

    from reid_prune.runtime import resolve_device

    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="'mps' was asked for but this machine has no Apple MPS device"):
            resolve_device("mps")
