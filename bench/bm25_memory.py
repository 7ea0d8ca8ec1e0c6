"""BM25 retrieval's memory and time against corpus size (``--retriever bm25``).

For each size N, a synthetic corpus of N passages (16 seeded words each, as in
``embed_memory.py``) and 1,000 synthetic queries go through the pipeline's BM25 retrieval
(``rerank_ray.bm25.bm25_retrieval``: one Ray task reads the corpus, tokenizes it, builds the
bm25s index and writes each query's top 100) in a fresh process whose driver and Ray worker
memory are sampled every 20 ms. The index is not streamed: the task holds the texts, their
tokens and the sparse score matrix; the driver holds nothing of the corpus. Checked: 100 rows
per query.

Usage:
    python bench/bm25_memory.py --passages 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from common import PeakRss, machine  # noqa: E402
from embed_memory import synthetic_corpus  # noqa: E402

QUERIES = 1000
K = 100


def stage_only(corpus: str, queries: str, out: str) -> None:
    """Run the BM25 retrieval alone in this (fresh) process; print time, rows and peaks."""
    from rerank_ray.bm25 import BM25Options, bm25_retrieval
    from rerank_ray.local_ray import start_local_ray

    start_local_ray(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    with PeakRss() as peaks:
        started = time.perf_counter()
        stats = bm25_retrieval(corpus, queries, out, K, BM25Options())
        seconds = time.perf_counter() - started
    rows = pq.read_metadata(out).num_rows
    assert rows == QUERIES * K, rows
    print(json.dumps({"seconds": seconds, "rows": rows, **stats, **peaks.to_dict()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--stage-only", nargs=3, metavar=("CORPUS", "QUERIES", "OUT"))
    args = parser.parse_args()
    if args.stage_only:
        stage_only(*args.stage_only)
        return
    print(f"machine: {machine()}")
    for count in args.passages:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = os.path.join(tmp, "corpus.parquet")
            queries = os.path.join(tmp, "queries.parquet")
            synthetic_corpus(corpus, count)
            words = pq.read_table(corpus).slice(0, QUERIES).column("text").to_pylist()
            pq.write_table(
                pa.table(
                    {"qid": [f"q{i}" for i in range(QUERIES)], "text": [w[:40] for w in words]}
                ),
                queries,
            )
            done = subprocess.run(
                [sys.executable, __file__, "--stage-only", corpus, queries,
                 os.path.join(tmp, "retrieval.parquet")],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{count:,} passages: BM25 retrieval {result['seconds']:.1f} s (index and search in"
                f" the task {result['bm25_seconds']:.1f} s); {PeakRss.describe(result)}"
            )


if __name__ == "__main__":
    main()
