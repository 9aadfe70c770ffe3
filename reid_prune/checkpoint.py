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
from .outputs import atomic_path

FORMAT = "reid_prune/1"
_RESIZABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def module_widths(model: nn.Module) -> dict[str, list[int]]:
    """Channel widths of every conv, linear and BN layer: {name: [out, in]} or {name: [C]}."""
    widths: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            widths[name] = [module.out_channels, module.in_channels]
        elif isinstance(module, nn.Linear):
            widths[name] = [module.out_features, module.in_features]
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            widths[name] = [module.num_features]
    return widths


def _resized(module: nn.Module, width: list[int]) -> nn.Module:
    """A fresh module like ``module`` with the given widths (weights are loaded afterwards)."""
    if isinstance(module, nn.Conv2d):
        out_c, in_c = width
        if module.groups != 1:
            raise ValueError("grouped convolutions cannot be resized")
        return nn.Conv2d(in_c, out_c, module.kernel_size, module.stride, module.padding, module.dilation,
                         bias=module.bias is not None, padding_mode=module.padding_mode)
    if isinstance(module, nn.Linear):
        out_f, in_f = width
        return nn.Linear(in_f, out_f, bias=module.bias is not None)
    (channels,) = width
    new = type(module)(channels, eps=module.eps, momentum=module.momentum, affine=module.affine,
                       track_running_stats=module.track_running_stats)
    if module.affine:
        new.weight.requires_grad_(module.weight.requires_grad)
        new.bias.requires_grad_(module.bias.requires_grad)
    return new


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
        setattr(parent, child, _resized(getattr(parent, child), list(width)))
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


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its format."""
    path = Path(path)
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


def load_model(path: str | os.PathLike) -> nn.Module:
    """Load a model saved by reid-prune, pruned or not, in eval mode on the CPU."""
    return model_from_checkpoint(read_checkpoint(path)).eval()
