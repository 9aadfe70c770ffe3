"""Shared pytest fixtures. Tests run on generated data; real data tests skip without ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The environment variable that says where reid_prune keeps generated synthetic datasets and latency
# tables (reid_prune.runtime.cache_dir). Tests never use the user's cache: a test points it with
# `cache_at`, a fixture wider than a test with `use_cache`, a subprocess gets {CACHE_VAR: folder} in its env.
CACHE_VAR = "REID_PRUNE_CACHE"

# --set overrides for runs that take seconds: tiny synthetic data, ResNet-18 at 64x32, CPU.
TINY_RUN = [
    "data.height=64", "data.width=32", "data.p=4", "data.k=2", "data.workers=0", "data.eval_batch_size=64",
    "data.synthetic.ids=12", "data.synthetic.test_ids=6", "data.synthetic.images_per_camera=2",
    "model.arch=resnet18", "loss.id_weight=1.0", "train.device=cpu",
]

# The tiny bench file, and --set overrides that make it a bench of seconds: one dataset, ResNet-18 alone, HaoLi.
TINY_BENCH = REPO / "configs" / "bench" / "synthetic_tiny.yaml"
SMALL_BENCH = ["base.data.p=4", "base.data.k=2", "base.train.max_batches=2", "base.train.device=cpu",
               "base.eval.latency_batch_sizes=[1]", "epochs=1", "finetune_epochs=1", "baselines=[resnet18]",
               "prune_arch=resnet18", "methods=[haoli]", "budgets=[0.5]", "cross_domain=[]",
               "datasets={synthetic_a: {synthetic: {ids: 8, test_ids: 4, images_per_camera: 2, seed: 0}}}"]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two-core CI machine: keep each test to one intra-op thread so timings and results are stable.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


def use_cache(mp: pytest.MonkeyPatch, folder: Path) -> Path:
    """Point $REID_PRUNE_CACHE at FOLDER until MP is undone; returns FOLDER (for module and session fixtures)."""
    mp.setenv(CACHE_VAR, str(folder))
    return Path(folder)


@pytest.fixture
def cache_at(monkeypatch, request):
    """``cache_at(folder)`` points $REID_PRUNE_CACHE at FOLDER for the rest of this test; returns FOLDER.

    Which folder is the caller's choice, and it matters:

    - ``cache_at()``: an empty cache of this test's own, ``tmp_path / "cache"``. Tests that fake latency
      timings need it (a faked table must never be read by another test), as do tests that generate data
      the others must not see.
    - ``cache_at(tiny_run / "cache")``: reuse the dataset the session's tiny run generated (TINY_RUN's data).
    - ``session_cache`` (the fixture below): one folder the whole session shares.
    """
    def point(folder: Path | None = None) -> Path:
        if folder is None:
            folder = request.getfixturevalue("tmp_path") / "cache"
        return use_cache(monkeypatch, folder)

    return point


@pytest.fixture
def session_cache(cache_at, tmp_path_factory) -> Path:
    """Point $REID_PRUNE_CACHE for this test at BASETEMP/cache, one folder the whole session shares.

    Modules that train on generated data use it (pytestmark = pytest.mark.usefixtures("session_cache")),
    so each dataset is generated once per session, outside the user's cache.
    """
    return cache_at(tmp_path_factory.getbasetemp() / "cache")


def shared_data(name: str) -> Path:
    """Path to a folder of ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} is absent (research data lives only beside the repo)")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """ROOT of a 1-epoch run on tiny synthetic data (2 batches), trained once per session.

    The run is in ROOT/run (best.pt, last.pt, ...), its generated dataset in ROOT/cache.
    """
    from reid_prune.config import load_config
    from reid_prune.jobs.train import train

    root = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, root / "cache")
        cfg = load_config(None, TINY_RUN + ["train.epochs=1", "train.warmup_epochs=0", "train.max_batches=2",
                                            "eval.latency=false"])
        train(cfg, output=root / "run", progress=False)
    return root
