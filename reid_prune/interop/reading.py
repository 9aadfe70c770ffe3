"""Reading another tool's checkpoint file: weights only, in the containers the tools write.

Nothing in the file is run: ``torch.load(..., weights_only=True)`` rebuilds tensors, containers and
numbers, and refuses any other Python object. Besides those, only numpy's scalars and arrays are
allowed, since torchreid stores its rank-1 accuracy as a numpy float beside the weights; a pickled
model (``torch.save(model)``) is refused with the line that saves its weights instead.

The containers: a plain state_dict; torchreid's ``{'state_dict': ..., 'epoch', 'rank1', 'optimizer',
...}``; fast-reid's ``{'model': ..., 'optimizer', 'scheduler', 'iteration'}``. Keys saved from a
``DataParallel`` or ``DistributedDataParallel`` wrapper lose their ``module.`` prefix.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import FORMAT, check_not_folder

# Where each tool keeps the state_dict in its checkpoint dict: torchreid, then fast-reid.
CONTAINER_KEYS = ("state_dict", "model")
WRAPPER_PREFIX = "module."


def _numpy_globals() -> list:
    """numpy's scalar and array constructors, under numpy 2's and numpy 1's module names: data, no code."""
    core = (np._core if hasattr(np, "_core") else np.core).multiarray
    found = [core.scalar, core._reconstruct, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype, named in pickles
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dtypes.__all__]
    # Files written under numpy 1 name the same constructors numpy.core.multiarray.*.
    return found + [(core.scalar, "numpy.core.multiarray.scalar"),
                    (core._reconstruct, "numpy.core.multiarray._reconstruct")]


@contextlib.contextmanager
def _numpy_allowed() -> Iterator[None]:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        yield
        return
    with allow(_numpy_globals()):
        yield


def load_weights_only(path: str | os.PathLike) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, with numpy numbers allowed.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` is a folder (a checkpoint inside it is suggested); the file is not a torch file, or it holds a pickled Python object (named, with the
            line that saves its weights instead).
    """
    path = Path(path)
    check_not_folder(path, ("*.pth", "*.pth.tar*", "*.pt", "*.tar"))  # the files the three tools write
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with _numpy_allowed():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for files that are not its own
        found = re.search(r"GLOBAL ([\w.]+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if found is not None:
            raise ValueError(
                f"checkpoint {str(path)!r} holds a pickled Python object ({found.group(1)}), which is code reid-prune "
                "does not run (it loads weights only); in the tool's own environment save the weights alone, "
                "torch.save(model.state_dict(), 'weights.pth'), and import that file") from None
        raise ValueError(f"checkpoint {str(path)!r} is not a file torch.load can read ({type(exc).__name__}); "
                         "pass the .pth, .pt or .pth.tar file the tool saved") from None


def find_state_dict(obj: object, path: str | os.PathLike) -> tuple[dict[str, Tensor], str]:
    """The state_dict in a loaded checkpoint, without wrapper prefixes, and how the file held it (in words).

    Raises:
        ValueError: a reid-prune checkpoint (nothing to import), an optimizer's state (the model file is
            named), or no state_dict: the message names the entries that are not tensors.
    """
    where = str(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        raise ValueError(f"checkpoint {where!r} is a reid-prune checkpoint already: pass it to eval, prune or "
                         "export as it is")
    if isinstance(obj, Mapping) and {"state", "param_groups"} <= set(obj):
        # reid-strong-baseline's ModelCheckpoint writes NAME_optimizer_N.pth beside NAME_model_N.pth.
        name = Path(path).name
        model = name.replace("_optimizer_", "_model_") if "_optimizer_" in name else "resnet50_model_120.pth"
        raise ValueError(f"checkpoint {where!r} holds an optimizer's state (state, param_groups), not the model's "
                         f"weights; reid-strong-baseline writes the model beside it as NAME_model_EPOCH.pth: "
                         f"import {'that file, ' if '_optimizer_' in name else 'a file such as '}{model!r}")
    container = "a plain state_dict"
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj, container = obj[key], f"a dict's {key!r} entry"
                break
    if not isinstance(obj, Mapping) or not obj:
        held = "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise ValueError(f"checkpoint {where!r} holds {held}, not a state_dict; pass a file holding a state_dict, "
                         f"or a dict with one under {' or '.join(repr(k) for k in CONTAINER_KEYS)}")
    others = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if others:
        raise ValueError(f"checkpoint {where!r}: {container} has entries that are not tensors ({', '.join(others[:5])}"
                         f"{', ...' if len(others) > 5 else ''}); pass a file holding a state_dict, or a dict with "
                         f"one under {' or '.join(repr(k) for k in CONTAINER_KEYS)}")
    state = {key.removeprefix(WRAPPER_PREFIX): value for key, value in obj.items()}
    if len(state) < len(obj):
        raise ValueError(f"checkpoint {where!r}: keys with and without the {WRAPPER_PREFIX!r} prefix name the same "
                         "weights; save the model's state_dict alone")
    if any(key.startswith(WRAPPER_PREFIX) for key in obj):
        container += f", {WRAPPER_PREFIX!r} prefixes (a DataParallel wrapper's) removed"
    return state, container


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], str]:
    """:func:`load_weights_only` then :func:`find_state_dict`: the weights of another tool's file."""
    return find_state_dict(load_weights_only(path), path)
