"""How torchreid, fast-reid and reid-strong-baseline name and build their ResNet re-ID models.

Each tool is one :class:`Source`: where its trunk's weights live, how its head's keys map onto
ReIDNet's, its stem, its default last stride (strides are not weights, so a file cannot tell), and
what its head holds (an embedding, a BNNeck, a classifier). Read from each tool's own code:

* torchreid (KaiyangZhou/deep-person-reid, ``torchreid/models/resnet.py``): torchvision's trunk names
  at the top level; ``fc`` (``resnet50_fc512``: Linear with a bias, BatchNorm1d, ReLU); a
  ``classifier`` Linear with a bias; last stride 2, but 1 for ``resnet50_fc512``; evaluation returns
  the pooled (or fc) feature. The trunk's stem is torchvision's.
* fast-reid (JDAI-CV/fast-reid, ``modeling/backbones/resnet.py``, ``modeling/heads/embedding_head.py``):
  ``backbone.`` trunk whose max-pool has no padding and rounds up; ``heads.bottleneck.0`` the BNNeck
  (a BatchNorm2d on the pooled 1x1 map); ``heads.weight`` the classifier (no bias);
  ``heads.pool_layer.p`` a learnt GeM exponent; evaluation returns the feature after the bottleneck.
  ``MODEL.BACKBONE.LAST_STRIDE`` is 1 in its configs.
* reid-strong-baseline, "bag of tricks" (michuanhaohao/reid-strong-baseline, ``modeling/baseline.py``):
  ``base.`` trunk whose stem has no ReLU (commented out there); ``bottleneck`` the BNNeck;
  ``classifier`` (no bias after a BNNeck, a bias without one); ``MODEL.LAST_STRIDE`` 1;
  ``TEST.NECK_FEAT`` 'after' by default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .layout import Renamed, trunk_rules

DEFAULT_GEM_P = 3.0  # fast-reid's GeneralizedMeanPooling(norm=3), the exponent when the file stores none


class Refusal(ValueError):
    """What a tool's weights hold that ReIDNet cannot hold; the importer says which file."""


@dataclass(frozen=True)
class Source:
    """One tool's naming of a ResNet re-ID model."""

    name: str                                   # --from
    title: str                                  # in messages
    trunk: str                                  # prefix of the trunk's keys
    head: tuple[tuple[str, str], ...]           # (their key or prefix, ours) of the head
    stem: str                                   # backbone.STEMS
    last_stride: Callable[[Renamed], tuple[int, str]]  # the tool's default, and why
    read_head: Callable[[Renamed, dict, list[str]], None]  # sets neck, embedding, classes; folds weights

    def rules(self) -> list[tuple[str, str]]:
        return [*self.head, *trunk_rules(self.trunk)]


def _classifier(r: Renamed, config: dict, notes: list[str], title: str) -> None:
    """Keep a bias-free identity classifier (its identities); leave one with a bias out, saying why."""
    if "classifier.bias" in r.state:
        name = r.theirs("classifier.weight")
        r.pop("classifier.weight"), r.pop("classifier.bias")
        notes.append(f"identity classifier ({name}) left out: {title}'s has a bias and ReIDNet's has none; "
                     "prune and train start a new one for their identities")
    elif "classifier.weight" in r.state:
        config["num_classes"] = int(r.state["classifier.weight"].shape[0])


def _torchreid_head(r: Renamed, config: dict, notes: list[str]) -> None:
    if "embedding.0.weight" in r.state:
        config["embedding_dim"] = int(r.state["embedding.0.weight"].shape[0])
        bias = r.pop("embedding.0.bias")
        if bias is not None and "embedding.1.running_mean" in r.state:
            # BN(Wx + b) = BN(Wx) with its running mean moved by b; in training the batch mean absorbs b.
            r.state["embedding.1.running_mean"] = r.state["embedding.1.running_mean"] - bias
            notes.append("fc.0.bias folded into fc.1's running mean (exact: the BatchNorm after it subtracts it)")
    _classifier(r, config, notes, "torchreid")


def _torchreid_stride(r: Renamed) -> tuple[int, str]:
    if "embedding.0.weight" in r.state:
        return 1, "torchreid's resnet50_fc512 (the ResNet with an fc layer)"
    return 2, "torchreid's resnet18/34/50"


def _bot_head(r: Renamed, config: dict, notes: list[str]) -> None:
    config["neck"] = "bnneck" if "neck.weight" in r.state else "none"
    _classifier(r, config, notes, "reid-strong-baseline")
    if config["neck"] == "bnneck":
        notes.append("retrieval feature after the BNNeck (TEST.NECK_FEAT 'after'); for 'before' evaluate with "
                     "--set model.retrieval_feature=before_neck")


def _fastreid_head(r: Renamed, config: dict, notes: list[str]) -> None:
    neck = r.state.get("neck.weight")
    if neck is not None and neck.dim() != 1:
        raise Refusal("its head has an embedding layer (heads.bottleneck.0, a 1x1 convolution of "
                      "MODEL.HEADS.EMBEDDING_DIM) that ReIDNet has no counterpart for (its embedding is Linear, "
                      "BatchNorm, ReLU); import a model trained with MODEL.HEADS.EMBEDDING_DIM 0")
    config["neck"] = "bnneck" if neck is not None else "none"
    if "pool.p" in r.state:
        config["pooling"] = "gem"
        r.state["pool.p"] = r.state["pool.p"].reshape(())  # a (1,) parameter there, a scalar here
    _classifier(r, config, notes, "fast-reid")
    if "classifier.weight" in r.state:
        notes.append("classifier heads.weight kept as a plain linear classifier (MODEL.HEADS.CLS_LAYER Linear; "
                     "a cosine head's weights start fine-tuning on another scale)")
    for key, expected in (("pixel_mean", IMAGENET_MEAN), ("pixel_std", IMAGENET_STD)):
        stored = r.pop(key)
        if stored is not None and not torch.allclose(stored.flatten().double() / 255, torch.tensor(expected).double(),
                                                     atol=1e-4):
            # No spaces in the list: the flag pastes into a shell as one word.
            values = ",".join(f"{round(v / 255, 4):g}" for v in stored.flatten().tolist())
            option = "mean" if key == "pixel_mean" else "std"
            notes.append(f"{key} is not ImageNet's: evaluate with --set data.transforms.{option}=[{values}]")


SOURCES = {source.name: source for source in (
    Source("torchreid", "torchreid", "", (("fc.0.", "embedding.0."), ("fc.1.", "embedding.1."),
                                           ("classifier.", "classifier.")),
           "torchvision", _torchreid_stride, _torchreid_head),
    Source("fastreid", "fast-reid", "backbone.", (("heads.bottleneck.0.", "neck."),
                                                  ("heads.weight", "classifier.weight"), ("heads.pool_layer.p", "pool.p"),
                                                  ("pixel_mean", "pixel_mean"), ("pixel_std", "pixel_std")),
           "ceil_pool", lambda r: (1, "fast-reid's MODEL.BACKBONE.LAST_STRIDE in its configs"), _fastreid_head),
    Source("bot", "reid-strong-baseline", "base.", (("bottleneck.", "neck."), ("classifier.", "classifier.")),
           "no_relu", lambda r: (1, "reid-strong-baseline's MODEL.LAST_STRIDE"), _bot_head),
)}
