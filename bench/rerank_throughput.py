"""Rerank throughput: the pipeline's rerank stage against a bare FlagReranker.compute_score.

The same (query, passage) pairs go through both, in one run: for each of Q MS MARCO queries,
its positive and the positives of the next rows (``--depth`` pairs per query). The default
model is ``minilm-smoke`` (MiniLM's architecture with a random head: its scores mean
nothing, only the speed of the machinery is measured).

Usage:
    python bench/rerank_throughput.py --queries 50 --depth 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from common import machine, msmarco_rows, timer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--model", default="minilm-smoke")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--actors", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from rerank_ray.cross_encoder import RERANKER_ALIASES
    from rerank_ray.models import resolve_model_path
    from rerank_ray.pool import plan_resources
    from rerank_ray.rerank import RerankOptions, rerank_candidates

    rows = msmarco_rows(args.queries + args.depth)
    passages = [r["positive"][0] for r in rows]
    pairs, retrieval = [], {"qid": [], "pid": [], "rank": [], "score": []}
    for q in range(args.queries):
        for rank in range(1, args.depth + 1):
            p = q + rank - 1
            pairs.append((rows[q]["query"], passages[p]))
            for key, value in (("qid", str(q)), ("pid", str(p)), ("rank", rank), ("score", 0.0)):
                retrieval[key].append(value)
    path = resolve_model_path(args.model, RERANKER_ALIASES)
    times: dict = {}

    from FlagEmbedding import FlagReranker

    with timer(times, "bare_load"):
        bare_model = FlagReranker(path, use_fp16=False, devices=["cpu"])
    with timer(times, "bare_score"):
        bare = np.asarray(bare_model.compute_score(pairs, max_length=args.max_length))
    del bare_model

    import ray

    with timer(times, "ray_init"):
        from rerank_ray.local_ray import start_local_ray

        start_local_ray(include_dashboard=False, logging_level="WARNING")
    resources = plan_resources(num_actors=args.actors)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            name: os.path.join(tmp, f"{name}.parquet")
            for name in ("corpus", "queries", "retrieval", "rerank")
        }
        pq.write_table(
            pa.table({"pid": [str(i) for i in range(len(passages))], "text": passages}),
            paths["corpus"],
        )
        pq.write_table(
            pa.table(
                {
                    "qid": [str(q) for q in range(args.queries)],
                    "text": [r["query"] for r in rows[: args.queries]],
                }
            ),
            paths["queries"],
        )
        pq.write_table(pa.table(retrieval), paths["retrieval"])
        options = RerankOptions(models=args.model, max_length=args.max_length)
        with timer(times, "pipeline_rerank"):
            rerank_candidates(
                paths["retrieval"],
                paths["corpus"],
                paths["queries"],
                paths["rerank"],
                options,
                resources,
            )
        result = pq.read_table(paths["rerank"]).to_pydict()
    ray.shutdown()
    lookup = {(q, p): s for q, p, s in zip(result["qid"], result["pid"], result["score"])}
    ours = np.array([lookup[(q, p)] for q, p in zip(retrieval["qid"], retrieval["pid"])])
    n = len(pairs)
    bare_total = times["bare_load"] + times["bare_score"]
    print(f"machine: {machine()}")
    print(
        f"pairs: {n} ({args.queries} queries x {args.depth}), model: {args.model}, max_length {args.max_length}, resources: {resources.to_dict()}"
    )
    print(
        f"bare FlagReranker: load {times['bare_load']:.1f} s + compute_score {times['bare_score']:.1f} s"
        f" = {bare_total:.1f} s -> {n / bare_total:.1f} pairs/s (scoring only {n / times['bare_score']:.1f}/s)"
    )
    print(
        f"pipeline rerank stage: {times['pipeline_rerank']:.1f} s -> {n / times['pipeline_rerank']:.1f} pairs/s"
        f" (plus ray.init {times['ray_init']:.1f} s)"
    )
    print(
        f"ratio pipeline/bare throughput (load+score vs stage): {bare_total / times['pipeline_rerank']:.2f}"
    )
    print(f"max |score difference| pipeline vs bare: {np.max(np.abs(ours - bare)):.2e}")


if __name__ == "__main__":
    main()
