"""ResNet18/34/50 re-ID feature extractors built on torchvision's ResNets.

One network with shared weights embeds every image of a triplet (the Siamese
design): the triplet losses call the same module on anchors, positives and
negatives, so there is only ever one set of weights.

Layout (names match torchvision so ImageNet state_dicts load directly)::

    x (B, 3, H, W)
      conv1 -> bn1 -> relu -> maxpool          (B, 64, H/4, W/4)
      layer1 .. layer4                          (B, C, H/32, W/32) or H/16 with last_stride=1
      pool (avg | max | gem) -> flatten         (B, C)           C = 512 (18/34) or 2048 (50)
      embedding (optional Linear + BN)          (B, E)
      neck (optional BNNeck, BatchNorm1d)       (B, D)           D = E or C
      classifier (Linear, only for training)    (B, num_classes)
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

ARCHS = ("resnet18", "resnet34", "resnet50")
POOLINGS = ("avg", "max", "gem")
NECKS = ("bnneck", "none")
RETRIEVAL_FEATURES = ("after_neck", "before_neck")
# The stem before layer1, for weights trained elsewhere (reid_prune/interop): "torchvision" is
# conv1-bn1-ReLU-maxpool(3, stride 2, padding 1); "no_relu" drops the ReLU (reid-strong-baseline's
# ResNet); "ceil_pool" pools without padding, rounding up (fast-reid's ResNet).
STEMS = ("torchvision", "no_relu", "ceil_pool")


class GeneralizedMeanPool(nn.Module):
    """GeM pooling: (mean x^p)^(1/p) over space, with a learnable p. (B, C, H, W) -> (B, C, 1, 1)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


def _make_pool(pooling: str) -> nn.Module:
    if pooling == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if pooling == "max":
        return nn.AdaptiveMaxPool2d(1)
    if pooling == "gem":
        return GeneralizedMeanPool()
    raise ValueError(f"model.pooling: expected one of {list(POOLINGS)}, got {pooling!r}")


class ReIDNet(nn.Module):
    """A torchvision ResNet trunk with a re-ID head.

    ``forward(x)`` returns the retrieval feature (B, D): after the BNNeck when
    there is one, as in "Bag of Tricks" (Luo et al. 2019), or the pooled feature
    before it with ``retrieval_feature="before_neck"``. ``forward(x,
    with_logits=True)`` returns ``(feature_for_metric_loss, logits)`` where the
    metric-loss feature is taken *before* the BNNeck and ``logits`` is None
    when the net has no classifier.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        last_stride: int = 1,
        pooling: str = "avg",
        neck: str = "bnneck",
        embedding_dim: int = 0,
        num_classes: int = 0,
        retrieval_feature: str = "after_neck",
        stem: str = "torchvision",
    ) -> None:
        super().__init__()
        # The build_model arguments that recreate this architecture (checkpoints store them).
        self.build_config = {"arch": arch, "last_stride": last_stride, "pooling": pooling, "neck": neck,
                             "embedding_dim": embedding_dim, "num_classes": num_classes,
                             "retrieval_feature": retrieval_feature}
        if arch not in ARCHS:
            raise ValueError(f"model.arch: expected one of {list(ARCHS)}, got {arch!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"model.last_stride: expected 1 or 2, got {last_stride!r}")
        if neck not in NECKS:
            raise ValueError(f"model.neck: expected one of {list(NECKS)}, got {neck!r}")
        self.set_retrieval_feature(retrieval_feature)
        if embedding_dim < 0 or num_classes < 0:
            raise ValueError("model.embedding_dim and num_classes must be >= 0")
        trunk = getattr(tv_resnet, arch)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        if stem not in STEMS:
            raise ValueError(f"stem: expected one of {list(STEMS)}, got {stem!r}")
        if stem != "torchvision":  # recorded only when set: checkpoints of the default stem stay as they were
            self.build_config["stem"] = stem
            if stem == "no_relu":
                self.relu = nn.Identity()
            else:
                self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        if last_stride == 1:
            _set_first_block_stride(self.layer4, 1)
        self.pool = _make_pool(pooling)

        channels = self.layer4[-1].bn2.num_features if arch != "resnet50" else self.layer4[-1].bn3.num_features
        if embedding_dim > 0:
            self.embedding: nn.Module | None = nn.Sequential(
                nn.Linear(channels, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim), nn.ReLU(inplace=True)
            )
            channels = embedding_dim
        else:
            self.embedding = None
        if neck == "bnneck":
            self.neck: nn.Module | None = nn.BatchNorm1d(channels)
            # BNNeck keeps its shift fixed at zero so the feature stays centred for cosine retrieval.
            self.neck.bias.requires_grad_(False)
        else:
            self.neck = None
        self.classifier: nn.Module | None = nn.Linear(channels, num_classes, bias=False) if num_classes > 0 else None
        self.feature_dim = channels
        self._init_head()

    def set_retrieval_feature(self, name: str) -> None:
        """Choose what ``forward(x)`` returns: ``after_neck`` or ``before_neck`` (no weight changes)."""
        if name not in RETRIEVAL_FEATURES:
            raise ValueError(f"model.retrieval_feature: expected one of {list(RETRIEVAL_FEATURES)}, got {name!r}")
        self.retrieval_feature = name
        self.build_config["retrieval_feature"] = name

    def _init_head(self) -> None:
        for module in (self.embedding, self.classifier):
            if module is None:
                continue
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.001 if m is self.classifier else 0.01)
        if self.neck is not None:
            nn.init.ones_(self.neck.weight)
            nn.init.zeros_(self.neck.bias)

    def forward(self, x: Tensor, with_logits: bool = False):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        feat = torch.flatten(self.pool(x), 1)
        if self.embedding is not None:
            feat = self.embedding(feat)
        neck_feat = self.neck(feat) if self.neck is not None else feat
        if not with_logits:
            return neck_feat if self.retrieval_feature == "after_neck" else feat
        logits = self.classifier(neck_feat) if self.classifier is not None else None
        return feat, logits


def _set_first_block_stride(layer: nn.Sequential, stride: int) -> None:
    """Change the spatial stride of a stage (its first block's strided conv and shortcut)."""
    block = layer[0]
    # torchvision puts the stride on conv1 in BasicBlock and on conv2 in Bottleneck (ResNet v1.5).
    strided = block.conv2 if isinstance(block, tv_resnet.Bottleneck) else block.conv1
    strided.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def load_pretrained_trunk(model: ReIDNet, arch: str, pretrained: str) -> None:
    """Load ImageNet weights (``"imagenet"``) or a local torchvision-format state_dict file into the trunk.

    The classifier (``fc.*``) of the source is skipped; every other trunk key must match.
    """
    if pretrained == "imagenet":
        weights = tv_resnet.__dict__[_WEIGHTS_ENUM[arch]].DEFAULT
        try:
            state = weights.get_state_dict(progress=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            # A ValueError: the CLI reports it in one line (exit 2) as the user's to fix.
            raise ValueError(
                f"model.pretrained=imagenet: could not fetch {weights} ({exc}). This machine may be offline: "
                f"download {weights.url} elsewhere and either place it in {torch.hub.get_dir()}/checkpoints/ "
                f"or set model.pretrained to the file's path."
            ) from exc
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.pretrained: {pretrained!r} is neither 'none', 'imagenet' nor an existing file"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    trunk_keys = {k for k in model.state_dict() if k.split(".")[0] in _TRUNK_PREFIXES}
    # Old torchvision files (resnet18/34 ImageNet) predate BN's num_batches_tracked; torch fills it in.
    missing = sorted(k for k in trunk_keys - state.keys() if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(state.keys() - trunk_keys)
    if missing or unexpected:
        raise ValueError(
            f"model.pretrained: {pretrained!r} does not fit a torchvision {arch}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. "
            "Give a state_dict saved from torchvision.models." + arch + "()."
        )
    own = model.state_dict()
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise ValueError(f"model.pretrained: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=False)


_WEIGHTS_ENUM = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights"}
_TRUNK_PREFIXES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def zero_residual_scales(model: ReIDNet) -> None:
    """Set the scale of each residual block's last BatchNorm (bn3 of a Bottleneck, bn2 of a BasicBlock) to 0.

    The same initialisation as torchvision's ``zero_init_residual=True``, applied after
    construction so that the other weights (and the random stream) stay those of the default.
    """
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            last = block.bn3 if isinstance(block, tv_resnet.Bottleneck) else block.bn2
            nn.init.zeros_(last.weight)


def reinitialise(model: ReIDNet, *, zero_init_residual: bool = False) -> ReIDNet:
    """Draw every weight again as :func:`build_model` does, at the model's current widths; returns ``model``.

    For a pruned architecture trained from scratch: layers resized by
    :func:`~reid_prune.checkpoint.apply_widths` otherwise start with PyTorch's default
    initialisation, the others with torchvision's. The trunk follows torchvision's ResNet rule
    (Kaiming normal, fan-out, for convolutions; BatchNorm scale 1, shift 0), then the head's
    and, with ``zero_init_residual``, :func:`zero_residual_scales`.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    model._init_head()
    if zero_init_residual:
        zero_residual_scales(model)
    return model


def build_model(
    arch: str = "resnet50",
    *,
    last_stride: int = 1,
    pooling: str = "avg",
    neck: str = "bnneck",
    embedding_dim: int = 0,
    num_classes: int = 0,
    retrieval_feature: str = "after_neck",
    pretrained: str = "none",
    zero_init_residual: bool = False,
    stem: str = "torchvision",
) -> ReIDNet:
    """Build a re-ID feature extractor.

    Args:
        arch: ``resnet18``, ``resnet34`` or ``resnet50``.
        last_stride: stride of the last stage, 1 (re-ID default: doubles the final map) or 2.
        pooling: global pooling, ``avg``, ``max`` or ``gem``.
        neck: ``bnneck`` (BatchNorm1d before the classifier) or ``none``.
        embedding_dim: size of an optional Linear+BN+ReLU embedding after pooling; 0 for none.
        num_classes: identity classifier outputs for the cross-entropy loss; 0 for none.
        retrieval_feature: what ``model(x)`` returns: ``after_neck`` (the BNNeck output) or
            ``before_neck`` (the pooled / embedded feature the metric loss sees).
        pretrained: ``none``, ``imagenet`` (torchvision weights API) or a path to a
            torchvision-format state_dict file.
        zero_init_residual: start the last BatchNorm scale of every residual block at 0, so
            each block is the identity at first (for training from scratch; pretrained
            weights, when loaded, replace it).
        stem: ``torchvision``, or the stem of another tool's ResNet (:data:`STEMS`) for imported weights.

    Returns:
        A :class:`ReIDNet` mapping (B, 3, H, W) images to (B, D) features.
    """
    model = ReIDNet(arch, last_stride, pooling, neck, embedding_dim, num_classes, retrieval_feature, stem)
    if zero_init_residual:
        zero_residual_scales(model)
    if pretrained not in ("none", "", None):
        load_pretrained_trunk(model, arch, pretrained)
    return model
