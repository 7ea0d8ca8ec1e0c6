"""The evaluate stage at MS MARCO's official depth: time and peak memory.

Synthetic rankings shaped like a dev-small run: Q queries x top K retrieved (random pids, one
relevant passage per query at a random rank), the top R of each reranked with random scores
by S rerankers (one ``rerank/<system>.parquet`` each); then
``rerank_ray.evaluation.evaluate_run`` with the significance tests and a depth sweep for every
reranker, in this process (peak RSS by ``resource.getrusage``: the process is fresh). No
baseline: it is the stage's own cost at this size.

Usage:
    python bench/evaluate_depth.py --queries 6980 --k 1000 --rerank 100 --systems 2 --depths 10,20,50,100
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def write_run(root: str, queries: int, k: int, rerank: int, systems: int) -> dict[str, str]:
    """Write the run's files; return ``{system: rerank file}``."""
    rng = np.random.default_rng(0)
    qids = np.repeat(np.arange(queries), k).astype(str)
    pids = rng.integers(0, 10_000_000, queries * k).astype(str)
    ranks = np.tile(np.arange(1, k + 1), queries).astype(np.int32)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    os.makedirs(os.path.join(root, "rerank"), exist_ok=True)
    pq.write_table(
        pa.table(
            {"qid": qids, "pid": pids, "rank": ranks, "score": (1.0 / ranks).astype(np.float32)}
        ),
        os.path.join(root, "retrieval.parquet"),
    )
    relevant = pids.reshape(queries, k)[np.arange(queries), rng.integers(0, k, queries)]
    pq.write_table(
        pa.table({"qid": np.arange(queries).astype(str), "pid": relevant,
                  "relevance": np.ones(queries, np.int32)}),
        os.path.join(root, "data", "qrels.parquet"),
    )  # fmt: skip
    head = (ranks <= rerank).nonzero()[0]
    paths = {}
    for system in range(systems):
        score = rng.standard_normal(len(head)).astype(np.float32)
        order = np.lexsort((ranks[head], -score, np.repeat(np.arange(queries), rerank)))
        paths[f"reranker{system}"] = path = os.path.join(
            root, "rerank", f"reranker{system}.parquet"
        )
        pq.write_table(
            pa.table({
                "qid": qids[head][order], "pid": pids[head][order],
                "rank": np.tile(np.arange(1, rerank + 1), queries).astype(np.int32),
                "score": score[order],
                "relevance_score": (1 / (1 + np.exp(-score[order]))).astype(np.float32),
                "retrieval_rank": ranks[head][order],
            }),
            path,
        )  # fmt: skip
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=6980)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--rerank", type=int, default=100)
    parser.add_argument("--systems", type=int, default=2, help="rerankers besides the retrieval")
    parser.add_argument("--depths", default="10,20,50,100")
    args = parser.parse_args()
    from rerank_ray.evaluation import evaluate_run
    from rerank_ray.rundir import RunDirectory

    with tempfile.TemporaryDirectory() as root:
        paths = write_run(root, args.queries, args.k, args.rerank, args.systems)
        depths = tuple(int(d) for d in args.depths.split(","))
        pairs = args.queries * args.rerank
        cost = {"pairs": pairs, "busy_seconds": 1.0}
        started = time.perf_counter()
        metrics, stats = evaluate_run(
            os.path.join(root, "retrieval.parquet"), paths,
            os.path.join(root, "data", "qrels.parquet"), args.k, RunDirectory(root),
            depths=depths, rerank_costs=dict.fromkeys(paths, cost),
        )  # fmt: skip
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.queries} queries x top {args.k} ({args.queries * args.k:,} rows), "
        f"{len(metrics)} systems ({args.systems} rerankers of the top {args.rerank}, {pairs:,}"
        f" pairs each), depths {args.depths}: evaluate {seconds:.1f} s, peak RSS {peak:.0f} MiB;"
        f" {len(stats['significance']['comparisons'])} comparisons,"
        f" {stats['evaluated_queries']} queries"
    )


if __name__ == "__main__":
    main()
