"""Typed configuration: dataclass schema, YAML loading, ``--set`` overrides, errors that name the key.

Every run is described by one :class:`Config`. YAML files give only the keys that
differ from the defaults below; ``--set a.b=value`` overrides any key after the
file is read. Values given with ``--set`` are parsed as YAML, so ``--set
train.milestones=[40,70]`` and ``--set prune.rate=0.3`` work. Files and ``--set``
share one YAML reader, which also takes floats written without a dot (``1e-4``).

Every key is checked up front: its type, its range (declared beside its default
below) and the rules that tie keys together, so a mistake stops a run before it
writes anything.

Errors name the key path and say what is wrong::

    config key train.lr: expected a number, got 'fast'
    config key train.lrr is not a valid key; did you mean train.lr?
"""

from __future__ import annotations

import dataclasses
import re
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .backbone import ARCHS, NECKS, POOLINGS, RETRIEVAL_FEATURES
from .config_fields import ConfigError, check_fields, choice, merge, number_range, require, tagged, tagged_keys
from .data.datasets import CUHK03_VARIANTS, DATASET_KINDS
from .evaluation.features import METRICS as DISTANCES
from .evaluation.metrics import AP_MODES
from .losses import METRICS as LOSS_METRICS
from .losses import TRIPLET_MODES
from .precision import AMP_SETTINGS, CHANNELS_LAST_SETTINGS, LEGACY_AMP
from .pruners.config import PruneConfig, check_prune

__all__ = ["Config", "ConfigError", "DataConfig", "EvalConfig", "LossConfig", "ModelConfig", "PruneConfig",
           "TrainConfig", "changed_keys", "config_from_dict", "dump_config", "load_config", "parse_override",
           "parse_yaml", "read_yaml", "tagged_keys", "validate"]


@dataclass
class SyntheticConfig:
    """The generated dataset used when ``data.dataset`` is ``synthetic``."""

    ids: int = number_range(60, 2)
    test_ids: int = number_range(30, 1)
    cameras: int = number_range(3, 2)
    images_per_camera: int = number_range(4, 2)  # one query and at least one gallery image per camera
    seed: int = number_range(0, 0, 2**31 - 1)


@dataclass
class TransformConfig:
    flip_prob: float = number_range(0.5, 0, 1)
    pad: int = number_range(10, 0)
    random_erasing: float = number_range(0.5, 0, 1)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = number_range([0.229, 0.224, 0.225], 0, low_open=True)


@dataclass
class DataConfig:
    dataset: str = choice("synthetic", "synthetic", *DATASET_KINDS)
    root: str = ""  # dataset folder; for synthetic, where to write it ("" = a cache folder)
    name: str = ""  # display name of a market_layout folder
    cuhk03_variant: str = choice("detected", *CUHK03_VARIANTS)
    height: int = number_range(256, 1)
    width: int = number_range(128, 1)
    p: int = number_range(16, 2)  # identities per batch; batch-hard mining needs negatives
    k: int = number_range(4, 1)  # images per identity
    # Training identities carved into a validation query/gallery (0: none). Every decision (best checkpoint,
    # pruning schedules that steer by mAP, the sensitivity's rates) reads it; the test split is only scored.
    val_ids: int = tagged(number_range(0, 0), "later")
    val_seed: int = tagged(number_range(0, 0, 2**31 - 1), "later")  # which identities: the same for every run seed
    workers: int = tagged(number_range(2, 0), "runtime", "unhashed")
    eval_batch_size: int = tagged(number_range(128, 1), "runtime", "unhashed")
    # Decode every image once when the dataset is read: error (stop, naming the file),
    # skip (leave unreadable images out, with a warning) or off (for huge, trusted datasets).
    check_images: str = tagged(choice("error", "error", "skip", "off", aliases={False: "off"}),  # YAML reads off as false
                               "runtime", "unhashed")
    # Decode every image once, resized, into memory (uint8): auto = when the images fit in a quarter
    # of the available memory. Saves the JPEG decoding and the resize of every later pass.
    cache: bool | str = tagged(choice("auto", "auto", True, False), "runtime", "unhashed")
    transforms: TransformConfig = field(default_factory=TransformConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    arch: str = choice("resnet50", *ARCHS)
    last_stride: int = 1
    pooling: str = choice("avg", *POOLINGS)
    neck: str = choice("bnneck", *NECKS)
    embedding_dim: int = number_range(0, 0)
    # What the model returns for retrieval: the BNNeck output, or the pooled feature before it.
    retrieval_feature: str = tagged(choice("after_neck", *RETRIEVAL_FEATURES), "eval_only", "not_training")
    pretrained: str = "none"  # none | imagenet | path to a torchvision state_dict
    # From scratch: start each residual block's last BatchNorm scale at 0, so every block
    # begins as the identity (Goyal et al. 2017). Deep nets then train faster on small data.
    zero_init_residual: bool = False


@dataclass
class LossConfig:
    triplet: str = choice("batch_hard", *TRIPLET_MODES)
    margin: float = number_range(0.3, 0)
    soft_margin: bool = False
    metric: str = choice("euclidean", *LOSS_METRICS)
    triplet_weight: float = number_range(1.0, 0)
    id_weight: float = number_range(0.0, 0)  # identity cross-entropy; > 0 adds a classifier to the model
    label_smoothing: float = number_range(0.1, 0, 1, high_open=True)


@dataclass
class TrainConfig:
    epochs: int = tagged(number_range(120, 1), "resumable")
    optimizer: str = choice("adam", "adam", "sgd")
    lr: float = number_range(3.5e-4, 0, low_open=True)
    weight_decay: float = number_range(5e-4, 0)
    # Which parameters weight decay reaches: conv and linear weights only (the "bag of tricks" default),
    # or every parameter, BatchNorm scales and shifts and biases included (a plain torch.optim setup).
    decay_norms_and_biases: bool = tagged(False, "later")
    # The BNNeck's shift stays at zero (bag of tricks) unless this trains it like any BatchNorm shift.
    train_neck_bias: bool = tagged(False, "later")
    momentum: float = number_range(0.9, 0, 1, high_open=True)
    warmup_epochs: int = number_range(10, 0)
    warmup_factor: float = number_range(0.01, 0, 1, low_open=True)  # learning rate multiplier at the first warm-up step
    scheduler: str = choice("multistep", "multistep", "cosine", "constant")
    milestones: list[int] = number_range([40, 70], 0)
    gamma: float = number_range(0.1, 0, 1, low_open=True)  # learning rate multiplier at each milestone
    eval_every: int = tagged(number_range(10, 1), "resumable")  # epochs; the last epoch is always evaluated
    # auto | cpu | cuda | cuda:N; under torchrun auto and cuda mean cuda:LOCAL_RANK. A resumed run may move to
    # another device, but a bench cell's key keeps it: CUDA kernels sum floats in another order than the CPU's.
    device: str = tagged("auto", "runtime")
    # Autocast precision of training, evaluation and fine-tuning (weights stay fp32): auto = bf16/fp16
    # on CUDA, bf16 on a CPU with native bf16, else fp32; off = fp32. Old configs: true = auto, false = off.
    amp: str = choice("auto", *AMP_SETTINGS, aliases={**LEGACY_AMP, "fp32": "off"})
    # Memory format of the model and its inputs: auto = channels-last on the CPU, and on CUDA under autocast.
    # Out of a bench cell's key (it changes only the order of the same float32 sums); a resume compares what
    # it resolves to (the checkpoint's "compute"), so it is no runtime key.
    channels_last: bool | str = tagged(choice("auto", *CHANNELS_LAST_SETTINGS), "unhashed")
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)
    seed: int = number_range(0, 0, 2**31 - 1)
    max_batches: int = number_range(0, 0)  # cap on batches per epoch (0 = a full pass); for smoke runs
    # TensorBoard logs (the tensorboard extra, reid_prune/engine/tensorboard.py): true = OUTPUT/tensorboard,
    # a folder, or false. Watching a run changes no weight: a resume may change it, a bench key leaves it out.
    tensorboard: bool | str = tagged(False, "runtime", "unhashed")


@dataclass
class EvalConfig:
    metric: str = tagged(choice("cosine", *DISTANCES), "eval_only")
    flip: bool = tagged(False, "eval_only")
    ap: str = tagged(choice("torchreid", *AP_MODES), "eval_only")
    latency: bool = tagged(True, "runtime", "unhashed")
    latency_batch_sizes: list[int] = tagged(number_range([1, 32], 1), "runtime", "unhashed")
    # k-reciprocal re-ranking (Zhong et al., CVPR 2017; reid_prune/evaluation/rerank.py) of eval's and prune's
    # reports, beside the plain metrics, which it leaves as they are: training (best.pt, pruning schedules) and
    # the bench read the plain ones only, so these keys stay out of bench cell keys, like the latency ones.
    rerank: bool = tagged(False, "runtime", "unhashed")
    rerank_k1: int = tagged(number_range(20, 1), "runtime", "unhashed")  # k of the k-reciprocal sets (paper: 20)
    rerank_k2: int = tagged(number_range(6, 1), "runtime", "unhashed")  # query expansion neighbours; 1 = off (paper: 6)
    rerank_lambda: float = tagged(number_range(0.3, 0, 1), "runtime", "unhashed")  # weight of the original distance


@dataclass
class Config:
    output: str = tagged("runs/default", "runtime", "unhashed")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = tagged(field(default_factory=EvalConfig), "not_training")
    prune: PruneConfig = tagged(field(default_factory=PruneConfig), "not_training")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def validate(cfg: Config) -> Config:
    """Check every key's choices and range, then the rules that tie keys together. Returns ``cfg``.

    Raises:
        ConfigError: naming the first key that is wrong and what it accepts.
    """
    check_fields(cfg)
    d, m, loss, t = cfg.data, cfg.model, cfg.loss, cfg.train
    require(bool(cfg.output), "output", "give the run folder, e.g. runs/demo")
    require(d.dataset == "synthetic" or bool(d.root), "data.root",
            f"dataset {d.dataset} needs the path of its folder")
    require(d.synthetic.ids + d.synthetic.test_ids <= 9999, "data.synthetic.ids",
            "synthetic pids have 4 digits: ids + test_ids must be <= 9999")
    for key in ("mean", "std"):
        values = getattr(d.transforms, key)
        require(len(values) == 3, f"data.transforms.{key}", f"expected one value per colour channel (3), got {values}")
    require(m.last_stride in (1, 2), "model.last_stride", f"expected 1 or 2, got {m.last_stride}")
    triplet_on = loss.triplet != "none" and loss.triplet_weight > 0
    require(triplet_on or loss.id_weight > 0, "loss.id_weight",
            "nothing to train: the triplet loss is off (loss.triplet none or loss.triplet_weight 0); "
            "set loss.id_weight above 0 or turn the triplet loss on")
    if triplet_on and d.k < 2:
        # A triplet needs two images of one identity; with k=1 the triplet part is exactly 0.
        require(loss.id_weight > 0, "data.k", "with only the triplet loss, data.k must be at least 2 (a positive "
                "pair needs two images of one identity), got 1")
        warnings.warn("data.k=1: no batch holds a positive pair, so the triplet loss is 0 and only the identity "
                      "loss trains; set data.k to 2 or more to use the triplet loss", UserWarning, stacklevel=3)
    require(list(t.milestones) == sorted(t.milestones), "train.milestones", "must be increasing")
    require(bool(DEVICE_PATTERN.fullmatch(t.device)), "train.device",
            f"expected auto, cpu, cuda, cuda:N or mps, got {t.device!r}")
    require(not cfg.eval.latency or bool(cfg.eval.latency_batch_sizes), "eval.latency_batch_sizes",
            "give at least one batch size, or set eval.latency=false")
    check_prune(cfg.prune)
    return cfg


def changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two nested config dicts: {key: (before, after)}."""
    changed = {}
    for key in sorted(set(before) | set(after), key=str):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "options":
            changed.update(changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            changed[f"{prefix}{key}"] = (a, b)
    return changed


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads floats written without a dot (``1e-4``, ``5E+3``) or with a sign before
    the dot (``-.5``) as numbers, and refuses a key given twice.

    PyYAML follows YAML 1.1, where ``1e-4`` is a string; YAML 1.2 and users read it as a number.
    """


    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # PyYAML keeps the last of two equal keys without a word; a config (or layer_rates file) that names a
        # key twice is almost surely a mistake, so it is refused.
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Copy the resolver table first: add_implicit_resolver would otherwise append to SafeLoader's lists.
_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))
# YAML 1.1 reads .5 as a number but -.5 and +.5 as strings.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]\.[0-9][0-9_]*$"), list("-+"))


def parse_yaml(text: str) -> Any:
    """Parse YAML text with the reader shared by config files and ``--set`` (see :class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], parsed YAML value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, for example --set train.lr=0.001")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def nest(keys: list[str], value: Any) -> dict[str, Any]:
    """``(["a", "b"], 1)`` -> ``{"a": {"b": 1}}``."""
    for key in reversed(keys):
        value = {key: value}
    return value


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file, with a ConfigError naming the file when it is missing, invalid or empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        values = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {exc}") from exc
    if values is None or values == {}:
        # An empty file would silently run every default (ResNet-50, 256x128, 120 epochs).
        raise ConfigError(f"{what} {str(path)!r} is empty; write the keys you mean (see configs/demo.yaml)")
    return values


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (), *,
                base: dict[str, Any] | None = None, after: typing.Sequence[dict[str, Any]] = ()) -> Config:
    """Read a YAML config (or start from the defaults), apply ``a.b=value`` overrides and validate.

    ``base``: a nested dict (e.g. the config stored with a run) applied over the defaults
    before the file and the overrides. ``after``: nested dicts applied last, in order (a
    command's own flags, which win over the file and ``--set``).
    """
    cfg = Config()
    if base is not None:
        merge(cfg, base)
    if path is not None:
        merge(cfg, read_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        merge(cfg, nest(keys, value))
    for values in after:
        merge(cfg, values)
    return validate(cfg)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build a validated Config from a nested dict (for example one stored in a checkpoint)."""
    return load_config(base=values)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
