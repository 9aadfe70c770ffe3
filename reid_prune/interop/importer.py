"""``import_checkpoint``: another tool's ResNet re-ID model as a ReIDNet, written as a reid-prune checkpoint.

The file is read with weights only (:mod:`.reading`), its keys renamed by its tool's rules
(:mod:`.sources`), the architecture read from the weights (depth, block type, BNNeck, embedding,
classifier) and from the tool's defaults where the weights cannot tell (last stride, pooling).
Every weight must find its place and every place its weight, with the same shape; otherwise
nothing is written and one line names the keys. The checkpoint records the model config, so
``eval``, ``prune``, ``export`` and ``extract`` take it like any other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..backbone import POOLINGS, ReIDNet, build_model
from ..checkpoint import save_checkpoint
from ..outputs import check_output_file
from .layout import TRUNK, Renamed, infer_arch, other_family, rename, shown
from .reading import read_state_dict
from .sources import DEFAULT_GEM_P, SOURCES, Refusal, Source

# The model keys eval and prune compare with the config (jobs/evaluate.py ARCHITECTURE_KEYS; a test holds
# the two equal): the --set flags that go with an imported checkpoint.
CONFIG_KEYS = ("arch", "last_stride", "pooling", "neck", "embedding_dim")


@dataclass
class ImportedModel:
    """An imported network and what the import read, assumed and left out.

    ``model``: the ReIDNet in eval mode; ``model_config``: its build_model arguments (stored in the
    checkpoint); ``container``: how the file held the weights; ``notes``: one line per assumption
    or weight left out; ``output``: the checkpoint written, if any.
    """

    model: ReIDNet
    model_config: dict[str, Any]
    source: str
    container: str
    notes: list[str] = field(default_factory=list)
    output: Path | None = None

    def config_overrides(self) -> list[str]:
        """``key=value`` for ``--set``: the model section a config needs to evaluate or prune this checkpoint."""
        return [f"model.{key}={self.model_config[key]}" for key in CONFIG_KEYS]


# Each option's Python argument with the CLI flag that sets it: one check serves import_checkpoint and the command.
def _check_options(source: str, last_stride: int | None, pooling: str | None) -> Source:
    if source not in SOURCES:
        raise ValueError(f"source (--from): expected one of {', '.join(SOURCES)}, got {source!r}")
    if last_stride not in (None, 1, 2):
        raise ValueError(f"last_stride (--last-stride): expected 1 or 2, got {last_stride!r}")
    if pooling not in (None, *POOLINGS):
        raise ValueError(f"pooling (--pooling): expected one of {', '.join(POOLINGS)}, got {pooling!r}")
    return SOURCES[source]


def _look_alike(keys: set[str], source: Source) -> str:
    """Why the weights are no ResNet of ``source``: another tool's naming (with the --from that reads it) or none."""
    for other in SOURCES.values():
        if other is not source and f"{other.trunk}layer1.0.conv1.weight" in keys:
            return (f"its keys are named as {other.title}'s ({other.trunk}layer1.0.conv1.weight, ...): "
                    f"pass --from {other.name}")
    return (f"it holds no ResNet trunk ({source.trunk}layer1.0.conv1.weight, ...; found {shown(sorted(keys))}); "
            "only ResNet-18, -34 and -50 re-ID models import")


def _pooling(r: Renamed, config: dict, notes: list[str], pooling: str | None) -> None:
    stored = config.get("pooling")  # gem when the file holds a learnt exponent
    if stored is not None and pooling not in (None, stored):
        raise Refusal(f"it holds a learnt GeM exponent ({r.theirs('pool.p')}), so --pooling {pooling} contradicts it")
    config["pooling"] = pooling or stored or "avg"
    if config["pooling"] == "gem" and "pool.p" not in r.state:
        r.state["pool.p"] = torch.tensor(DEFAULT_GEM_P)
        notes.append(f"GeM exponent p = {DEFAULT_GEM_P:g} (not stored: a fixed-p GeM pooling)")


def _check_fit(r: Renamed, model: ReIDNet) -> list[str]:
    """What keeps the renamed weights from loading into ``model``, in the tool's names; empty when they fit."""
    own = model.state_dict()
    unknown = r.unknown + [r.theirs(k) for k in r.state if k not in own]
    # BatchNorms without a step count (old files, frozen BatchNorms) keep ReIDNet's: it steers no computation here.
    missing = [r.theirs(k) for k in own if k not in r.state and not k.endswith(".num_batches_tracked")]
    shapes = [f"{r.theirs(k)} {tuple(v.shape)} where ReIDNet's {k} is {tuple(own[k].shape)}"
              for k, v in r.state.items() if k in own and v.shape != own[k].shape]
    problems = []
    if unknown:
        problems.append(f"keys ReIDNet has no place for: {shown(sorted(unknown))}")
    if missing:
        problems.append(f"missing keys: {shown(missing)}")
    if shapes:
        problems.append(f"shape mismatches: {shown(shapes)}")
    return problems


def _map(state: dict[str, Tensor], source: Source, last_stride: int | None, pooling: str | None
         ) -> tuple[ReIDNet, dict[str, Any], list[str]]:
    family = other_family(list(state))
    if family is not None:
        raise Refusal(f"its backbone {family}; only plain ResNet-18, -34 and -50 re-ID models import "
                      "(docs/interop.md)")
    if f"{source.trunk}layer1.0.conv1.weight" not in state:
        raise Refusal(_look_alike(set(state), source))
    r = rename(state, source.rules())
    arch, described = infer_arch({k: v for k, v in r.state.items() if k.split(".")[0] in TRUNK})
    if arch is None:
        raise Refusal(f"its trunk is {described}; only ResNet-18, -34 and -50 import (docs/interop.md)")
    notes: list[str] = []
    config: dict[str, Any] = {"arch": arch, "neck": "none", "embedding_dim": 0, "num_classes": 0}
    source.read_head(r, config, notes)
    _pooling(r, config, notes, pooling)
    stride, why = source.last_stride(r)
    if last_stride is None:
        notes.insert(0, f"last stride {stride}: {why} (strides are not stored; pass --last-stride if yours differs)")
    config.update(last_stride=last_stride or stride, retrieval_feature="after_neck", stem=source.stem)
    model = build_model(**config)
    problems = _check_fit(r, model)
    if problems:
        raise Refusal(f"it does not fit a ReIDNet {arch}: {'; '.join(problems)}; only the tool's own ResNet-18, "
                      "-34 and -50 re-ID models import (docs/interop.md)")
    model.load_state_dict(r.state, strict=False)  # only step counts can be absent (checked above)
    return model.eval(), model.build_config, notes


def import_checkpoint(checkpoint: str | os.PathLike, source: str, output: str | os.PathLike | None = None, *,
                      last_stride: int | None = None, pooling: str | None = None) -> ImportedModel:
    """Map a ResNet-18/34/50 re-ID model of torchreid, fast-reid or reid-strong-baseline onto :class:`ReIDNet`.

    Args:
        checkpoint: the tool's file: a state_dict, torchreid's ``{'state_dict': ...}`` or fast-reid's
            ``{'model': ...}``, with or without ``module.`` prefixes. Loaded with ``weights_only``.
        source: ``torchreid``, ``fastreid`` or ``bot`` (reid-strong-baseline).
        output: where to write the reid-prune checkpoint (atomically); None writes nothing.
        last_stride: the last stage's stride (1 or 2) when it differs from the tool's default
            (torchreid 2, or 1 with an fc layer; fast-reid and reid-strong-baseline 1).
        pooling: ``avg``, ``max`` or ``gem`` when the model's pooling differs from the file's (a learnt
            GeM exponent) or the tool's default (avg).

    Returns:
        An :class:`ImportedModel`: the network in eval mode, its config, the notes on what was assumed.

    Raises:
        FileNotFoundError: no such file.
        FileExistsError: ``output`` exists (it is not replaced).
        ValueError: a bad option or output path (before reading); a file that is not a torch file or holds
            a pickled object; weights of another backbone (IBN, SE, non-local, OSNet, deeper ResNets),
            unknown or missing keys or shapes that do not fit: one line naming the keys. Nothing is written.
    """
    spec = _check_options(source, last_stride, pooling)
    if output is not None:
        check_output_file(output, "output (--output)", inputs=[checkpoint])
        if Path(output).exists():  # as prune keeps an existing pruned.pt: a model is never replaced unasked
            raise FileExistsError(f"output (--output) {str(output)!r} exists; choose another output or delete it")
    state, container = read_state_dict(checkpoint)
    try:
        model, config, notes = _map(state, spec, last_stride, pooling)
    except Refusal as exc:
        raise ValueError(f"{spec.title} checkpoint {str(checkpoint)!r} cannot be imported: {exc}") from None
    imported = ImportedModel(model, config, spec.name, container, notes)
    if output is not None:
        save_checkpoint(output, model, config, imported={"source": spec.name, "file": str(checkpoint),
                                                         "container": container, "notes": notes})
        imported.output = Path(output)
    return imported
