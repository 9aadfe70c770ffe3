"""Time the vectorised rank_metrics against the per-query reference loop on a Market-1501-sized problem.

The distance matrix is random, the pid and camera arrays follow Market-1501's
test split: 751 identities, 6 cameras, 3,368 queries and 15,913 gallery images
of which about 2,800 are distractors (pid 0). Exits with status 1 when the two
implementations disagree (mAP, mINP or CMC beyond 1e-6) or when the vectorised
one takes longer than --max-seconds.

    python scripts/bench_eval.py
    python scripts/bench_eval.py --num-query 500 --num-gallery 4000 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from reid_prune.evaluation import rank_metrics, rank_metrics_loop


def market_like_problem(num_query: int, num_gallery: int, num_ids: int, num_cams: int, distractors: float, seed: int):
    """Random (num_query, num_gallery) float32 distances with Market-like id and camera arrays."""
    rng = np.random.default_rng(seed)
    num_distractors = int(round(num_gallery * distractors))
    identities = rng.integers(1, num_ids + 1, num_gallery - num_distractors)
    g_pids = np.concatenate([np.zeros(num_distractors, dtype=np.int64), identities])
    rng.shuffle(g_pids)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-query", type=int, default=3368, help="queries (default: Market-1501's 3368)")
    parser.add_argument("--num-gallery", type=int, default=15913, help="gallery images (default: Market-1501's 15913)")
    parser.add_argument("--num-ids", type=int, default=751, help="test identities (default: 751)")
    parser.add_argument("--num-cams", type=int, default=6, help="cameras (default: 6)")
    parser.add_argument("--distractors", type=float, default=0.176, help="share of gallery with pid 0 (default: 0.176)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--ap", choices=("torchreid", "official"), default="torchreid", help="AP definition")
    parser.add_argument("--max-seconds", type=float, default=3.0, help="fail when the vectorised run is slower")
    args = parser.parse_args(argv)

    problem = market_like_problem(
        args.num_query, args.num_gallery, args.num_ids, args.num_cams, args.distractors, args.seed
    )
    print(f"distance matrix {args.num_query} x {args.num_gallery} float32, {args.num_ids} ids, {args.num_cams} cameras")

    start = time.perf_counter()
    fast = rank_metrics(*problem, ap=args.ap)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = rank_metrics_loop(*problem, ap=args.ap)
    loop_s = time.perf_counter() - start

    print(f"vectorised rank_metrics: {fast_s:.3f} s")
    print(f"per-query loop:          {loop_s:.3f} s")
    print(f"speed-up:                {loop_s / fast_s:.1f}x")
    print(
        f"mAP {fast['mAP']:.4f}  rank1 {fast['rank1']:.4f}  mINP {fast['mINP']:.4f}  "
        f"valid queries {fast['num_valid_queries']}  skipped {fast['num_skipped_queries']}"
    )

    failures = []
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10"):
        # Percent values: 1e-6 as a fraction is 1e-4 percent.
        if abs(fast[key] - reference[key]) > 1e-4:
            failures.append(f"{key}: vectorised {fast[key]!r} != loop {reference[key]!r}")
    if not np.allclose(fast["cmc"], reference["cmc"], rtol=0, atol=1e-6):
        failures.append("cmc differs between the vectorised and the loop implementation")
    if (fast["num_valid_queries"], fast["num_skipped_queries"]) != (
        reference["num_valid_queries"],
        reference["num_skipped_queries"],
    ):
        failures.append("query counts differ between the vectorised and the loop implementation")
    if fast_s > args.max_seconds:
        failures.append(f"vectorised rank_metrics took {fast_s:.3f} s, over the {args.max_seconds} s limit")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    if not failures:
        print("OK: both implementations agree")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
