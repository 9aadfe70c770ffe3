"""k-reciprocal re-ranking (reid_prune.evaluation.rerank) against a slow transcription of the paper's steps,
against torchreid's function where it is installed, in bounded memory, and through eval's report and CLI."""

from __future__ import annotations

import importlib
import json
import tracemalloc

import numpy as np
import pytest

from conftest import REPO, TINY_RUN
from reid_prune.cli import main
from reid_prune.config import ConfigError, load_config
from reid_prune.evaluation import extract_features, pairwise_distance, rank_metrics
from reid_prune.evaluation import rerank as rerank_module
from reid_prune.evaluation.rerank import k_reciprocal_distance


def transcription(qf: np.ndarray, gf: np.ndarray, metric: str, k1: int, k2: int, lam: float,
                  expand: bool = True) -> np.ndarray:
    """Zhong et al. (CVPR 2017), Sec. 3, step by step with Python sets and loops, in float64.

    Where the paper leaves a detail to its code, the convention of the authors' released Python code
    (which torchreid copies) is taken, each marked "code:" below. ``expand=False`` skips the R* expansion.
    """
    f = np.concatenate([qf, gf]).astype(np.float64)
    n, q = len(f), len(qf)
    if metric == "cosine":
        unit = f / np.linalg.norm(f, axis=1, keepdims=True)
        d = 1 - unit @ unit.T
    else:  # straight from the differences, not from |a|^2 + |b|^2 - 2ab as the library computes it
        d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(axis=2))
    d = d**2  # code: the squared distance ...
    d = d / d.max(axis=1, keepdims=True)  # ... divided by the row's largest

    ranking = [list(np.argsort(d[i], kind="stable")) for i in range(n)]

    def nn(i: int, k: int) -> list[int]:
        """N(i, k): the k nearest items; code: the pool holds i itself, so k + 1 items, i first."""
        return ranking[i][: k + 1]

    def reciprocal(i: int, k: int) -> set[int]:
        """R(i, k) = {j in N(i, k) : i in N(j, k)}."""
        return {j for j in nn(i, k) if i in nn(j, k)}

    half = round(k1 / 2)  # R(q, k/2); Python's round is half to even, like the code's np.around
    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r if expand else ():  # R*(i): add R(c, k/2) when it shares more than 2/3 of its items (code: >)
            rc = reciprocal(c, half)
            if len(rc & r) > 2 / 3 * len(rc):
                expanded |= rc
        for j in expanded:  # the Gaussian kernel on R*(i) ...
            v[i, j] = np.exp(-d[i, j])
        v[i] /= v[i].sum()  # ... code: normalised to sum 1
    if k2 != 1:  # local query expansion over the k2 nearest by the original distance (code: i itself among them)
        v = np.stack([v[ranking[i][:k2]].mean(axis=0) for i in range(n)])
    out = np.empty((q, n - q))
    for a in range(q):
        for b in range(n - q):
            g = q + b
            jaccard = 1 - np.minimum(v[a], v[g]).sum() / np.maximum(v[a], v[g]).sum()
            out[a, b] = (1 - lam) * jaccard + lam * d[a, g]
    return out


def identities(num_q: int, num_g: int, num_ids: int, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery features around ``num_ids`` random centres, so that neighbourhoods have structure."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    q = centres[np.arange(num_q) % num_ids] + 0.6 * rng.normal(size=(num_q, dim))
    g = centres[np.arange(num_g) % num_ids] + 0.6 * rng.normal(size=(num_g, dim))
    return q.astype(np.float32), g.astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("k1, k2, lam", [(20, 6, 0.3), (7, 3, 0.5), (5, 1, 0.0), (4, 4, 1.0)])
def test_matches_the_transcription_of_the_paper(metric, k1, k2, lam):
    qf, gf = identities(6, 20, num_ids=5)
    ours = k_reciprocal_distance(qf, gf, metric=metric, k1=k1, k2=k2, lambda_value=lam)
    expected = transcription(qf, gf, metric, k1, k2, lam)
    assert ours.shape == (6, 20) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_the_small_case_exercises_every_step():
    """A missing step would show in the comparison above: here re-ranking reorders the gallery, and the R*
    expansion and the query expansion each move the result by far more than the 1e-6 tolerance."""
    qf, gf = identities(6, 20, num_ids=5)
    for k1 in (20, 7):
        full = transcription(qf, gf, "cosine", k1, 3, 0.3)
        assert (np.argsort(full, axis=1) != np.argsort(pairwise_distance(qf, gf, "cosine"), axis=1)).any()
        assert np.abs(full - transcription(qf, gf, "cosine", k1, 3, 0.3, expand=False)).max() > 1e-3
        assert np.abs(full - transcription(qf, gf, "cosine", k1, 1, 0.3)).max() > 1e-3


def test_larger_case_in_small_blocks_matches_the_transcription(monkeypatch):
    """Row blocks of the distances and of the Jaccard sums change nothing: 3 rows and 50 terms at a time."""
    qf, gf = identities(15, 60, num_ids=12, seed=1)
    monkeypatch.setattr(rerank_module, "_CHUNK_ELEMENTS", 3 * 75)
    monkeypatch.setattr(rerank_module, "_TERMS", 50)
    ours = k_reciprocal_distance(qf, gf, k1=6, k2=3)
    np.testing.assert_allclose(ours, transcription(qf, gf, "cosine", 6, 3, 0.3), rtol=0, atol=1e-6)


def test_nearest_ranks_equal_values_by_index_like_a_stable_sort():
    rng = np.random.default_rng(0)
    dist = rng.integers(0, 4, size=(7, 30)).astype(np.float32)  # many ties, at the cut too
    for width in (1, 5, 13, 30):
        np.testing.assert_array_equal(rerank_module._nearest(dist, width),
                                      np.argsort(dist, axis=1, kind="stable")[:, :width])


def test_matches_torchreid_re_ranking():
    """torchreid's re_ranking (its copy of the authors' code; torchreid.reid.utils in the 0.2.5 package,
    torchreid.utils in its repository) on the same distances, where torchreid is installed."""
    pytest.importorskip("torchreid")
    for name in ("torchreid.reid.utils.rerank", "torchreid.utils.rerank"):
        try:
            re_ranking = importlib.import_module(name).re_ranking
            break
        except ModuleNotFoundError:
            continue
    else:
        pytest.skip("this torchreid has no re_ranking function")
    qf, gf = identities(6, 20, num_ids=5)
    for metric, k1, k2, lam in (("cosine", 20, 6, 0.3), ("euclidean", 20, 6, 0.3), ("cosine", 7, 3, 0.5)):
        theirs = re_ranking(pairwise_distance(qf, gf, metric), pairwise_distance(qf, qf, metric),
                            pairwise_distance(gf, gf, metric), k1=k1, k2=k2, lambda_value=lam)
        ours = k_reciprocal_distance(qf, gf, metric=metric, k1=k1, k2=k2, lambda_value=lam)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_memory_stays_below_one_dense_pool_matrix(monkeypatch):
    """N = 3,000 items: one dense N x N float32 matrix is 36 MB; the reference holds several. Peak numpy
    memory here (the output is 3 MB) stays under half of one."""
    qf, gf = identities(300, 2700, num_ids=300, dim=16, seed=2)
    monkeypatch.setattr(rerank_module, "_CHUNK_ELEMENTS", 1 << 16)
    monkeypatch.setattr(rerank_module, "_TERMS", 1 << 16)
    tracemalloc.start()
    try:
        out = k_reciprocal_distance(qf, gf)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense = 3000 * 3000 * 4
    assert out.shape == (300, 2700) and peak < dense / 2, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"k1": 0}, ValueError, "k1: expected an integer >= 1, got 0"),
    ({"k2": 2.5}, TypeError, "k2: expected an integer, got 2.5"),
    ({"lambda_value": 1.5}, ValueError, r"lambda_value: expected a number in \[0, 1\], got 1.5"),
    ({"metric": "hamming"}, ValueError, "metric: expected one of"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    qf, gf = identities(3, 6, num_ids=3)
    with pytest.raises(error, match=match):
        k_reciprocal_distance(qf, gf, **kwargs)


def test_features_with_nan_or_all_equal_are_refused():
    qf, gf = identities(3, 6, num_ids=3)
    qf[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        k_reciprocal_distance(qf, gf)
    same = np.ones((4, 3), dtype=np.float32)  # Euclidean distances exactly 0: no row to scale by its maximum
    with pytest.raises(ValueError, match="nothing to re-rank"):
        k_reciprocal_distance(same, same, metric="euclidean")


def test_config_declares_the_rerank_keys_and_their_ranges():
    e = load_config(None, []).eval
    assert (e.rerank, e.rerank_k1, e.rerank_k2, e.rerank_lambda) == (False, 20, 6, 0.3)
    for key, value in (("rerank_k1", 0), ("rerank_k2", 0), ("rerank_lambda", 1.2)):
        with pytest.raises(ConfigError, match=f"config key eval.{key}: must"):
            load_config(None, [f"eval.{key}={value}"])


def test_eval_rerank_reports_both_metrics(tiny_run, cache_at, tmp_path, capsys):
    """eval --rerank: the plain numbers are unchanged, the re-ranked ones are rank_metrics of
    k_reciprocal_distance on the model's own features, with the configured k1, k2 and lambda."""
    cache_at(tiny_run / "cache")
    config = ["--config", str(REPO / "configs" / "demo.yaml"), "--quiet", *[f"--set={o}" for o in TINY_RUN],
              "--set=eval.latency=false", "--checkpoint", str(tiny_run / "run" / "best.pt")]
    assert main(["eval", *config, "--json", str(tmp_path / "plain.json")]) == 0
    assert main(["eval", *config, "--rerank", "--set=eval.rerank_k1=5", "--set=eval.rerank_lambda=0.5",
                 "--json", str(tmp_path / "rerank.json")]) == 0
    printed = capsys.readouterr().out
    plain, report = (json.loads((tmp_path / name).read_text()) for name in ("plain.json", "rerank.json"))
    keys = ("mAP", "rank1", "rank5", "rank10", "mINP")
    assert {k: report[k] for k in keys} == {k: plain[k] for k in keys} and "rerank" not in plain
    reranked = report["rerank"]
    assert (reranked["k1"], reranked["k2"], reranked["lambda"]) == (5, 6, 0.5) and reranked["seconds"] >= 0
    assert "re-ranked (k-reciprocal, k1 5, k2 6, lambda 0.5" in printed

    from reid_prune.checkpoint import load_model
    from reid_prune.jobs.wiring import make_eval_loaders, prepare_dataset
    from reid_prune.runtime import Runtime

    cfg = load_config(REPO / "configs" / "demo.yaml", TINY_RUN)
    compute = Runtime.from_config(cfg.train).compute
    model = compute.place(load_model(tiny_run / "run" / "best.pt"))
    model.set_retrieval_feature(cfg.model.retrieval_feature)
    query, gallery = make_eval_loaders(cfg, prepare_dataset(cfg.data, verbose=False))
    options = {"device": compute.device, "precision": compute.precision, "channels_last": compute.channels_last,
               "progress": False}
    qf, q_pids, q_camids = extract_features(model, query, **options)
    gf, g_pids, g_camids = extract_features(model, gallery, **options)
    expected = rank_metrics(k_reciprocal_distance(qf, gf, k1=5, k2=6, lambda_value=0.5), q_pids, g_pids,
                            q_camids, g_camids)
    assert {k: reranked[k] for k in keys} == pytest.approx({k: expected[k] for k in keys})


def test_rerank_flag_is_refused_with_a_bad_parameter(tiny_run, cache_at, capsys):
    cache_at(tiny_run / "cache")
    code = main(["eval", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--rerank",
                 "--set=eval.rerank_k2=0", "--checkpoint", str(tiny_run / "run" / "best.pt")])
    assert code == 2 and "config key eval.rerank_k2: must" in capsys.readouterr().err
