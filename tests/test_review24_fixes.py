"""Fixes from a new user's review of import, re-ranking and bench-from-checkpoint (review 24).

Each test builds its own tiny files (synthetic bench keys, random tensors) and checks a refusal's exit
status and line, or a number against one computed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reid_prune.bench.schema import parse_bench
from reid_prune.config import ConfigError

BENCH = {
    "name": "r24", "input_size": [64, 32],
    "base": {"data": {"dataset": "synthetic", "workers": 0}, "model": {"pretrained": "none"},
             "train": {"device": "cpu", "max_batches": 1}, "eval": {"latency": False}},
    "datasets": {"a": {"synthetic": {"ids": 8, "test_ids": 4, "images_per_camera": 2, "seed": 0}}},
    "baselines": [{"arch": "resnet18"}], "prune_arch": "resnet18", "methods": ["haoli"], "budgets": [0.5],
}


def test_an_empty_checkpoint_path_is_refused_not_trained(tmp_path: Path) -> None:
    raw = {**BENCH, "baselines": [{"checkpoint": ""}], "prune_arch": "resnet50"}
    with pytest.raises(ConfigError, match=r"baselines\[0\]\.checkpoint: an empty path; give the checkpoint file"):
        parse_bench(raw, "r24.yaml", tmp_path)
    # A written bench.yaml holds checkpoint "" beside the epochs of a trained baseline: it still reads back.
    bench = parse_bench({**BENCH, "baselines": [{"arch": "resnet18", "epochs": 2, "checkpoint": ""}]}, "r24.yaml",
                        tmp_path)
    assert (bench.baselines[0].arch, bench.baselines[0].epochs) == ("resnet18", 2)
