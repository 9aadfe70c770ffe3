"""Typed configuration: dataclass schema, YAML loading, ``--set`` overrides, errors that name the key.

Every run is described by one :class:`Config`. YAML files give only the keys that
differ from the defaults below; ``--set a.b=value`` overrides any key after the
file is read. Values given with ``--set`` are parsed as YAML, so ``--set
train.milestones=[40,70]`` and ``--set prune.rate=0.3`` work.

Errors name the key path and say what is wrong::

    config key train.lr: expected a number, got 'fast'
    config key train.lrr is not a valid key; did you mean train.lr?
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .precision import AMP_SETTINGS, CHANNELS_LAST_SETTINGS, LEGACY_AMP


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the fix."""


def _choice(default: Any, *choices: Any, aliases: dict[Any, Any] | None = None) -> Any:
    """A field limited to ``choices``; ``aliases`` maps other accepted values (old spellings) onto them."""
    return field(default=default, metadata={"choices": choices, "aliases": aliases or {}})


def _show(value: Any) -> str:
    """A value as YAML spells it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class SyntheticConfig:
    """The generated dataset used when ``data.dataset`` is ``synthetic``."""

    ids: int = 60
    test_ids: int = 30
    cameras: int = 3
    images_per_camera: int = 4
    seed: int = 0


@dataclass
class TransformConfig:
    flip_prob: float = 0.5
    pad: int = 10
    random_erasing: float = 0.5
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DataConfig:
    dataset: str = _choice("synthetic", "synthetic", "market1501", "dukemtmc", "cuhk03np", "market_layout")
    root: str = ""  # dataset folder; for synthetic, where to write it ("" = a cache folder)
    name: str = ""  # display name of a market_layout folder
    cuhk03_variant: str = _choice("detected", "detected", "labeled")
    height: int = 256
    width: int = 128
    p: int = 16  # identities per batch
    k: int = 4  # images per identity
    workers: int = 2
    eval_batch_size: int = 128
    # Decode every image once, resized, into memory (uint8): auto = when the images fit in a quarter
    # of the available memory. Saves the JPEG decoding and the resize of every later pass.
    cache: bool | str = _choice("auto", "auto", True, False)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    arch: str = _choice("resnet50", "resnet18", "resnet34", "resnet50")
    last_stride: int = 1
    pooling: str = _choice("avg", "avg", "max", "gem")
    neck: str = _choice("bnneck", "bnneck", "none")
    embedding_dim: int = 0
    # What the model returns for retrieval: the BNNeck output, or the pooled feature before it.
    retrieval_feature: str = _choice("after_neck", "after_neck", "before_neck")
    pretrained: str = "none"  # none | imagenet | path to a torchvision state_dict
    # From scratch: start each residual block's last BatchNorm scale at 0, so every block
    # begins as the identity (Goyal et al. 2017). Deep nets then train faster on small data.
    zero_init_residual: bool = False


@dataclass
class LossConfig:
    triplet: str = _choice("batch_hard", "batch_hard", "random", "none")
    margin: float = 0.3
    soft_margin: bool = False
    metric: str = _choice("euclidean", "euclidean", "cosine")
    triplet_weight: float = 1.0
    id_weight: float = 0.0  # identity cross-entropy; > 0 adds a classifier to the model
    label_smoothing: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 120
    optimizer: str = _choice("adam", "adam", "sgd")
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 10
    warmup_factor: float = 0.01  # learning rate multiplier at the first warm-up step
    scheduler: str = _choice("multistep", "multistep", "cosine", "constant")
    milestones: list[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    eval_every: int = 10  # epochs; the last epoch is always evaluated
    device: str = "auto"  # auto | cpu | cuda | cuda:N; under torchrun auto and cuda mean cuda:LOCAL_RANK
    # Autocast precision of training, evaluation and fine-tuning (weights stay fp32): auto = bf16/fp16
    # on CUDA, bf16 on a CPU with native bf16, else fp32; off = fp32. Old configs: true = auto, false = off.
    amp: str = _choice("auto", *AMP_SETTINGS, aliases={**LEGACY_AMP, "fp32": "off"})
    # Memory format of the model and its inputs: auto = channels-last on the CPU, and on CUDA under autocast.
    channels_last: bool | str = _choice("auto", *CHANNELS_LAST_SETTINGS)
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    seed: int = 0
    max_batches: int = 0  # cap on batches per epoch (0 = a full pass); for smoke runs


@dataclass
class EvalConfig:
    metric: str = _choice("cosine", "cosine", "euclidean")
    flip: bool = False
    ap: str = _choice("torchreid", "torchreid", "official")
    latency: bool = True
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 32])


@dataclass
class PruneConfig:
    method: str = "haoli"
    rate: float | None = None  # fraction of channels pruned in every group
    target_macs: float | None = None  # fraction of the model's MACs kept
    target_params: float | None = None  # fraction of the model's parameters kept
    scope: str = _choice("internal", "internal", "all")
    include_stem: bool = True
    include_downsample: bool = True
    include_last_stage: bool = False
    min_channels: int = 1
    round_to: int = 1
    finetune_epochs: int = 0
    finetune_lr: float | None = None  # learning rate while fine-tuning (default: train.lr)
    data_batches: int = 8  # training batches used by data-driven criteria
    options: dict[str, Any] = field(default_factory=dict)  # method-specific settings


@dataclass
class Config:
    output: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return str(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; ints are accepted where numbers are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                try:
                    return _coerce(value, arg, path)
                except ConfigError:
                    pass
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key {path}: expected {_type_name(tp)}, got {value!r}")


def _merge(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Write ``values`` (nested dicts) into the dataclass ``obj``, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    names = list(fields)
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(prefix + n for n in names)}"
            raise ConfigError(f"config key {path} is not a valid key{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{path}.")
            continue
        if isinstance(current, dict) and isinstance(value, dict):
            # Free-form mappings (prune.options) merge key by key, so several --set options add up.
            setattr(obj, key, {**current, **value})
            continue
        # Old spellings of a choice (train.amp: true) become the current one before the type check.
        value = next((new for old, new in fields[key].metadata.get("aliases", {}).items() if _same(value, old)), value)
        setattr(obj, key, _coerce(value, hints[key], path))


def _check_choices(obj: Any, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{path}.")
        elif "choices" in f.metadata and not any(_same(value, c) for c in f.metadata["choices"]):
            choices = [_show(c) for c in f.metadata["choices"]]
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key {path}: expected one of {', '.join(choices)}, got {value!r}{hint}")


def _same(value: Any, choice: Any) -> bool:
    """Equal and of the same type: 1 is not true."""
    return type(value) is type(choice) and value == choice


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key {path}: {message}")


def validate(cfg: Config) -> Config:
    """Check choices and ranges that types alone cannot express. Returns ``cfg``."""
    _check_choices(cfg)
    d, t, p = cfg.data, cfg.train, cfg.prune
    _require(d.height > 0 and d.width > 0, "data.height", "image size must be positive")
    _require(d.p >= 2, "data.p", f"batch-hard mining needs at least 2 identities per batch, got {d.p}")
    _require(d.k >= 1, "data.k", f"must be at least 1, got {d.k}")
    _require(d.workers >= 0, "data.workers", f"must be >= 0, got {d.workers}")
    _require(d.dataset == "synthetic" or bool(d.root), "data.root",
             f"dataset {d.dataset} needs the path of its folder")
    _require(cfg.model.last_stride in (1, 2), "model.last_stride", f"expected 1 or 2, got {cfg.model.last_stride}")
    _require(t.epochs >= 0, "train.epochs", f"must be >= 0, got {t.epochs}")
    _require(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    _require(t.eval_every >= 1, "train.eval_every", f"must be >= 1, got {t.eval_every}")
    _require(list(t.milestones) == sorted(t.milestones), "train.milestones", "must be increasing")
    _require(cfg.loss.triplet_weight >= 0 and cfg.loss.id_weight >= 0, "loss.id_weight", "weights must be >= 0")
    _require(cfg.loss.triplet_weight > 0 or cfg.loss.id_weight > 0, "loss.triplet_weight",
             "at least one of loss.triplet_weight and loss.id_weight must be positive")
    if p.rate is not None:
        _require(0 <= p.rate < 1, "prune.rate", f"a prune fraction must lie in [0, 1), got {p.rate}")
    for key in ("target_macs", "target_params"):
        value = getattr(p, key)
        if value is not None:
            _require(0 < value <= 1, f"prune.{key}", f"a kept fraction must lie in (0, 1], got {value}")
    _require(p.min_channels >= 1, "prune.min_channels", f"must be >= 1, got {p.min_channels}")
    _require(p.round_to >= 1, "prune.round_to", f"must be >= 1, got {p.round_to}")
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed YAML value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set train.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file (empty = {}), with a ConfigError naming the file when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from exc


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), *,
                base: dict[str, Any] | None = None) -> Config:
    """Read a YAML config (or start from the defaults), apply ``a.b=value`` overrides and validate.

    ``base``: a nested dict (e.g. the config stored with a run) applied over the defaults
    before the file and the overrides.
    """
    cfg = Config()
    if base is not None:
        _merge(cfg, base)
    if path is not None:
        _merge(cfg, read_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        _merge(cfg, _nest(keys, value))
    return validate(cfg)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a validated Config from a nested dict (for example one stored in a checkpoint)."""
    return load_config(base=values)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
