"""The evaluate job: rank metrics, parameters, MACs and latency of a model or a saved checkpoint.

From a notebook::

    from reid_prune import evaluate_checkpoint, load_config
    report = evaluate_checkpoint(load_config("configs/demo.yaml"), "runs/demo/best.pt")
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import model_from_checkpoint, read_checkpoint
from ..config import Config
from ..data import ReIDDataset
from ..engine import evaluate_with_config
from ..evaluation import complexity, measure_latency
from ..evaluation.rerank import evaluate_reranked
from ..precision import model_memory_format
from ..runtime import Runtime
from .wiring import make_eval_loaders, prepare_dataset

METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")
# What a report's "rerank" entry holds (eval.rerank): the re-ranked metrics, the parameters and the time it took.
RERANK_KEYS = (*METRIC_KEYS, "num_valid_queries", "k1", "k2", "lambda", "seconds")
# The model keys a checkpoint fixes: the network is rebuilt from the checkpoint's own build arguments, so a
# config that says otherwise would be ignored without a word (model.retrieval_feature is the config's to choose).
ARCHITECTURE_KEYS = ("arch", "last_stride", "pooling", "neck", "embedding_dim")


def check_architecture(cfg: Config, ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose architecture differs from the config's ``model`` section.

    Every key of :data:`ARCHITECTURE_KEYS` the checkpoint records must equal the config's
    (checkpoints written before a key existed are not checked on it). An input size other than the
    one the checkpoint trained at is warned about (:func:`warn_input_size`).

    Raises:
        ValueError: naming each differing key, both values and the ``--set`` that matches the checkpoint.
    """
    warn_input_size(cfg, ckpt, path)
    stored = ckpt["model_config"]
    differ = [key for key in ARCHITECTURE_KEYS if key in stored and stored[key] != getattr(cfg.model, key)]
    if not differ:
        return
    others = [f"{key} {stored[key]}" for key in differ if key != "arch"]
    held = stored["arch"] + (f" with {' and '.join(others)}" if others else "")
    config = " and ".join(f"model.{key} is {getattr(cfg.model, key)}" for key in differ)
    fix = " ".join(f"--set model.{key}={stored[key]}" for key in differ)
    raise ValueError(f"checkpoint {str(path)!r} holds a {held} but the config's {config}; pass the matching "
                     f"config or {fix}")


def warn_input_size(cfg: Config, ckpt: dict[str, Any], path: str | Path) -> None:
    """Warn when ``data.height``/``data.width`` differ from the size the checkpoint's stored config trained at.

    Not a refusal: a fully convolutional network runs at any size and measuring it elsewhere is
    legitimate, but its mAP moves with the size, so a changed size must not pass unnoticed.
    Checkpoints without a stored config (or its sizes) are not checked.
    """
    data = (ckpt.get("config") or {}).get("data") or {}
    if not isinstance(data, dict) or not isinstance(data.get("height"), int) or not isinstance(data.get("width"), int):
        return
    trained, here = (data["height"], data["width"]), (cfg.data.height, cfg.data.width)
    if trained != here:
        warnings.warn(f"checkpoint {str(path)!r} was trained at {trained[0]}x{trained[1]} (height x width) but "
                      f"data.height/width give {here[0]}x{here[1]} here, so its scores differ from those at its "
                      f"trained size (--set data.height={trained[0]} --set data.width={trained[1]} matches it)",
                      UserWarning, stacklevel=2)


def model_report(model: nn.Module, cfg: Config, query_loader: DataLoader, gallery_loader: DataLoader, *,
                 runtime: Runtime, progress: bool = True, latency: bool | None = None) -> dict[str, Any]:
    """Rank metrics, parameters, MACs/FLOPs and (optionally) latency of ``model``: one number source for all.

    The features and the latency follow the config's precision and memory format on its
    device; ``latency_setting`` names them (device, precision, memory_format, threads), and
    ``memory_format`` is the layout the model's weights were evaluated in. With ``eval.rerank``,
    ``rerank`` holds :data:`RERANK_KEYS` of the k-reciprocal re-ranked distances, from the same features.
    """
    compute = runtime.compute
    e = cfg.eval
    if e.rerank:
        # The extraction evaluate_with_config runs, kept here so that both rankings share one set of features.
        metrics = evaluate_reranked(compute.place(model), query_loader, gallery_loader, metric=e.metric, ap=e.ap,
                                    k1=e.rerank_k1, k2=e.rerank_k2, lambda_value=e.rerank_lambda,
                                    device=compute.device, flip=e.flip, precision=compute.precision,
                                    channels_last=compute.channels_last, progress=progress)
    else:
        metrics = evaluate_with_config(model, cfg, query_loader, gallery_loader, compute=compute, progress=progress)
    size = (cfg.data.height, cfg.data.width)
    report: dict[str, Any] = {k: metrics[k] for k in METRIC_KEYS}
    report["num_valid_queries"] = metrics["num_valid_queries"]
    if e.rerank:
        report["rerank"] = {k: metrics["rerank"][k] for k in RERANK_KEYS}
    report["precision"], report["memory_format"] = compute.precision, model_memory_format(model)
    report.update(complexity(model, size))
    if cfg.eval.latency if latency is None else latency:
        report["latency_ms"] = measure_latency(model, size, batch_sizes=tuple(cfg.eval.latency_batch_sizes),
                                               device=compute.device, precision=compute.precision,
                                               channels_last=compute.channels_last)
        report["latency_setting"] = compute.describe()
    return report


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, *, progress: bool = True,
                        dataset: ReIDDataset | None = None) -> dict[str, Any]:
    """Evaluate a saved model (pruned or not) on the configured dataset's query/gallery split.

    ``dataset``: the parsed ``cfg.data`` when the caller has it. Under torchrun, preparing a
    dataset is a collective, so a caller that evaluates on rank 0 alone prepares it on all ranks first.

    Returns :func:`model_report`'s dict plus ``dataset``, the dataset's display name (``data.name``).
    """
    runtime = Runtime.from_config(cfg.train)
    ckpt = read_checkpoint(checkpoint)
    check_architecture(cfg, ckpt, checkpoint)
    model = model_from_checkpoint(ckpt)
    # The retrieval feature is an evaluation choice, not a weight: the config decides it.
    model.set_retrieval_feature(cfg.model.retrieval_feature)
    if dataset is None:
        dataset = prepare_dataset(cfg.data, verbose=progress)
    query_loader, gallery_loader = make_eval_loaders(cfg, dataset)
    report = model_report(model, cfg, query_loader, gallery_loader, runtime=runtime, progress=progress)
    return {"dataset": dataset.name, **report}
