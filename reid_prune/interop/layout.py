"""Naming rules between another tool's state_dict and ReIDNet's, and what a ResNet trunk's weights say.

A tool's keys are renamed by prefix rules, ``(theirs, ours)``: ``base.layer1.`` -> ``layer1.``. A rule
whose name does not end in a dot matches one key exactly (``heads.weight``). The same rules, read
backwards, name a weight ReIDNet needs in the tool's own words, so every message speaks the
naming the user's file has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

# The trunk's top-level modules, named alike by torchvision, torchreid, fast-reid and reid-strong-baseline.
TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
# Blocks per stage of the ResNets ReIDNet builds, and of the deeper ones named in refusals.
ARCHS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50"}
DEEPER = {(3, 4, 23, 3): "resnet101", (3, 8, 36, 3): "resnet152"}
# Backbones that are not a plain ResNet, found by a key of theirs (the message names the key).
FAMILIES = (
    ("has IBN-Net layers (instance normalisation)", re.compile(r"(^|\.)IN\.")),
    ("has squeeze-and-excitation blocks (SE-ResNet)", re.compile(r"(^|\.)(se|se_module)\.")),
    ("has non-local blocks", re.compile(r"(^|\.)NL_\d")),
    ("is an OSNet", re.compile(r"(^|\.)conv1\.conv\.weight$")),
)
SHOWN = 5  # keys named in a message


def trunk_rules(prefix: str) -> list[tuple[str, str]]:
    """Rules that move a trunk stored under ``prefix`` (``""``, ``base.``, ``backbone.``) to ReIDNet's names."""
    return [(f"{prefix}{name}.", f"{name}.") for name in TRUNK]


def _apply(key: str, rules: Sequence[tuple[str, str]], reverse: bool = False) -> str | None:
    for theirs, ours in rules:
        source, target = (ours, theirs) if reverse else (theirs, ours)
        if key == source or (source.endswith(".") and key.startswith(source)):
            return target + key[len(source):]
    return None


@dataclass
class Renamed:
    """A tool's weights under ReIDNet's names: ``state`` {ours: tensor}, ``names`` {ours: theirs}, and
    ``unknown``, the tool's keys no rule places."""

    rules: Sequence[tuple[str, str]]
    state: dict[str, Tensor] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    def theirs(self, ours: str) -> str:
        """The tool's name of ReIDNet's weight ``ours``."""
        return self.names.get(ours) or _apply(ours, self.rules, reverse=True) or ours

    def pop(self, ours: str) -> Tensor | None:
        """Take a weight out (it is folded into another or left out on purpose)."""
        self.names.pop(ours, None)
        return self.state.pop(ours, None)


def rename(state: Mapping[str, Tensor], rules: Sequence[tuple[str, str]]) -> Renamed:
    """Rename every key of ``state`` by the first rule that matches it."""
    out = Renamed(rules)
    for key, value in state.items():
        ours = _apply(key, rules)
        if ours is None:
            out.unknown.append(key)
        else:
            out.state[ours], out.names[ours] = value, key
    return out


def shown(keys: Sequence[str]) -> str:
    """Up to :data:`SHOWN` keys, and how many there are in all when there are more."""
    return ", ".join(keys[:SHOWN]) + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN else "")


def other_family(keys: Sequence[str]) -> str | None:
    """What makes a backbone other than a plain ResNet (``has ...`` or ``is ...``), with the keys that show it;
    None for a plain one."""
    for what, pattern in FAMILIES:
        found = [key for key in keys if pattern.search(key)]
        if found:
            return f"{what} ({shown(found)})"
    return None


def infer_arch(trunk: Mapping[str, Tensor]) -> tuple[str | None, str]:
    """(arch, description) of a trunk under ReIDNet's names; arch is None when ReIDNet has no such ResNet.

    The depth is read from the blocks each stage holds, the block type from ``conv3`` (Bottleneck).
    """
    blocks = []
    for stage in range(1, 5):
        indices = {int(key.split(".")[1]) for key in trunk
                   if key.startswith(f"layer{stage}.") and key.split(".")[1].isdigit()}
        blocks.append(max(indices) + 1 if indices else 0)
    blocks_t = tuple(blocks)
    bottleneck = "layer1.0.conv3.weight" in trunk
    arch = ARCHS.get((blocks_t, bottleneck))
    if arch is not None:
        return arch, arch
    name = DEEPER.get(blocks_t) if bottleneck else None
    kind = "Bottleneck" if bottleneck else "BasicBlock"
    return None, name or f"a ResNet of {kind}s with {list(blocks_t)} blocks per stage"
