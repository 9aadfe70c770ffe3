"""Checkpoints that rebuild pruned networks without pickled modules.

A checkpoint is a plain dict, so ``torch.load(path, weights_only=True)`` reads it::

    format        "reid_prune/1"
    model_config  keyword arguments of build_model (arch, last_stride, ...)
    widths        {module name: [out, in]} for Conv2d/Linear, [C] for BatchNorm
    state_dict    the weights
    ...           anything the caller adds (epoch, optimizer state, metrics, config)

``load_model`` builds the full-width network from ``model_config``, resizes every
layer listed in ``widths`` and loads the weights, so a pruned model loads by itself.
Files are written atomically: a crash mid-write never leaves a truncated checkpoint.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbone import build_model
from .layers import kind_of
from .outputs import atomic_path

FORMAT = "reid_prune/1"


def module_widths(model: nn.Module) -> dict[str, list[int]]:
    """Channel widths of every channel-carrying layer (:func:`~reid_prune.layers.kind_of`).

    Returns:
        {name: [out, in]} for convs and linears, {name: [C]} for BatchNorms, in module order.
    """
    widths: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is not None:
            widths[name] = list(kind.widths(module))
    return widths


def apply_widths(model: nn.Module, widths: dict[str, list[int]]) -> nn.Module:
    """Resize, in place, every layer whose width in ``widths`` differs from the model's. Returns ``model``."""
    current = module_widths(model)
    unknown = sorted(set(widths) - set(current))
    if unknown:
        raise ValueError(f"checkpoint widths name layers this architecture does not have: {unknown[:5]}")
    for name, width in widths.items():
        if list(width) == current[name]:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        # A fresh layer: its weights are loaded afterwards.
        setattr(parent, child, kind_of(module).resized(module, list(width), None))
    return model


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_save` of ``path`` left beside it; returns them.

    Call it only while no other process writes ``path``: their names are ``.{name}.*.tmp``.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, model_config: dict[str, Any] | None = None,
                    **extra: Any) -> Path:
    """Write ``model`` (pruned or not) with its widths and ``extra`` entries atomically to ``path``.

    ``model_config`` (build_model keyword arguments) defaults to the one the model was built with.
    """
    model = unwrap(model)
    if model_config is None:
        if not hasattr(model, "build_config"):
            raise ValueError("save_checkpoint: this model was not made by build_model; pass model_config")
        model_config = model.build_config
    payload = {
        "format": FORMAT,
        "model_config": dict(model_config, pretrained="none"),
        "widths": module_widths(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    return atomic_save(payload, path)


def check_not_folder(path: str | os.PathLike, names: tuple[str, ...] = ("best.pt", "last.pt")) -> None:
    """Refuse a folder given where a checkpoint file is expected, suggesting the first of ``names`` inside it.

    ``names``: file names or glob patterns (``*.pth``) of the checkpoints such a folder holds.

    Raises:
        ValueError: ``checkpoint 'PATH' is a folder, not a file; pass the checkpoint inside it, 'PATH/best.pt'``.
    """
    path = Path(path)
    if not path.is_dir():
        return
    inside = next((f for name in names for f in sorted(path.glob(glob.escape(name) if "*" not in name else name))
                   if f.is_file()), None)
    hint = f"pass the checkpoint inside it, '{inside}'" if inside else f"pass a checkpoint file ({', '.join(names)})"
    raise ValueError(f"checkpoint {str(path)!r} is a folder, not a file; {hint}")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its format.

    Raises:
        ValueError: ``path`` is a folder (its best.pt or last.pt is suggested), or not a reid-prune checkpoint.
        FileNotFoundError: nothing at ``path``.
    """
    path = Path(path)
    check_not_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        # torch's own message (about weights_only=False) would advise something unsafe and useless here.
        raise ValueError(f"checkpoint {str(path)!r} is not a readable reid-prune checkpoint "
                         f"({type(exc).__name__}); pass a best.pt, last.pt or pruned.pt written by reid-prune") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a reid-prune checkpoint (format {FORMAT!r}); "
            "to start from plain torchvision weights use model.pretrained instead"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the (possibly pruned) network described by a checkpoint dict and load its weights."""
    model = build_model(**ckpt["model_config"])
    apply_widths(model, ckpt["widths"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def model_with_new_classifier(ckpt: dict[str, Any], num_classes: int, seed: int) -> nn.Module:
    """The checkpoint's network with a new identity classifier of ``num_classes``, for another dataset's identities.

    The classifier is initialised as training initialises it, from ``seed`` (the same on every
    rank); every other weight is the checkpoint's.

    Raises:
        ValueError: the stored weights do not match the stored architecture.
    """
    config = dict(ckpt["model_config"], num_classes=num_classes)
    torch.manual_seed(seed)
    model = build_model(**config)
    apply_widths(model, {k: w for k, w in ckpt["widths"].items() if not k.startswith("classifier")})
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("classifier.") for k in missing):
        raise ValueError(f"the checkpoint's weights do not match its architecture ({(missing + unexpected)[:5]})")
    return model


def replace_classifier(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """``model`` (pruned or not) with a new identity classifier of ``num_classes``, for another dataset's identities.

    The classifier takes the model's current feature width and is initialised as a new model's
    (normal, std 0.001, no bias) from ``seed`` alone; every other weight is kept. In place, on the
    classifier's device and dtype; ``model.build_config`` is a new dict with the new ``num_classes``.
    Returns ``model``.
    """
    old = model.classifier
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(num_classes, old.in_features).normal_(0.0, 0.001, generator=generator)
    new = nn.Linear(old.in_features, num_classes, bias=False)
    with torch.no_grad():
        new.weight.copy_(weight)
    model.classifier = new.to(device=old.weight.device, dtype=old.weight.dtype)
    model.build_config = {**model.build_config, "num_classes": num_classes}
    return model


def load_model(path: str | os.PathLike) -> nn.Module:
    """Load a model saved by reid-prune, pruned or not, in eval mode on the CPU."""
    return model_from_checkpoint(read_checkpoint(path)).eval()
