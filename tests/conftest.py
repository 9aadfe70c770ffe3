"""Shared pytest fixtures. Tests run on generated data; real data tests skip without ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two-core CI machine: keep each test to one intra-op thread so timings and results are stable.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


def shared_data(name: str) -> Path:
    """Path to a folder of ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (research data lives only beside the repo)")
    return path
