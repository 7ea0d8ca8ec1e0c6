"""Exact top-k: the retrieval kernel and the Ray stage against faiss-cpu ``IndexFlatIP``.

Random unit vectors (seeded), N x dim corpus, Q queries, k neighbours. In one run:

* faiss-cpu ``IndexFlatIP.search`` (the baseline) and the pipeline's kernel in-process
  (``rerank_ray.topk.BlockSearch`` over blocks, its guess from the first vectors, as each Ray
  task runs it), interleaved,
  ``--repeats`` times each, the best kept;
* the whole retrieval stage (``rerank_ray.search.exact_search``: Ray tasks over Parquet files,
  merge in the driver), with the driver's and the workers' peak memory.

Neighbours are compared with faiss's, and both with a float64 ground truth (ties by pid) on
the first ``--check-queries`` queries: faiss's float32 sums can swap near-ties; the kernel's
float64 rescoring should not. ``--storage float16`` stores the corpus as float16 for the
kernel and the stage (faiss keeps float32).

Usage:
    python bench/topk.py --corpus 100000 --queries 1000 --k 100
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

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from common import PeakRss, machine  # noqa: E402


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def exact_reference(queries: np.ndarray, corpus: np.ndarray, pids: np.ndarray, k: int) -> list:
    """Top-k ids per query by float64 inner product, ties by pid: the ground truth."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    return [pids[np.lexsort((pids, -row))[:k]].tolist() for row in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; best is kept")
    parser.add_argument("--check-queries", type=int, default=20, help="float64 ground truth")
    parser.add_argument("--storage", choices=["float32", "float16"], default="float32")
    parser.add_argument("--stage", metavar="DIR", help=argparse.SUPPRESS)  # internal: child mode
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.stage:
        stage_only(args.stage, args.k)
        return

    import faiss
    import torch  # imported before timing: each Ray worker pays it once, not per search

    from rerank_ray.embed import to_fixed_size_list
    from rerank_ray.search import SAMPLE_ROWS, block_rows
    from rerank_ray.topk import BlockSearch

    corpus = unit_vectors(args.corpus, args.dim, 1)
    queries = unit_vectors(args.queries, args.dim, 2)
    pids = np.array([f"{i:08d}" for i in range(args.corpus)])
    stored = corpus.astype(args.storage)
    torch.set_num_threads(os.cpu_count() or 1)
    index = faiss.IndexFlatIP(args.dim)
    index.add(corpus)
    block = block_rows(args.dim)

    def run_faiss():
        return index.search(queries, args.k)[1]

    def run_kernel():
        search = BlockSearch(queries, args.k)
        search.estimate(stored[:SAMPLE_ROWS], args.corpus)
        for start in range(0, args.corpus, block):
            search.add(stored[start : start + block], pids[start : start + block])
        return search.result(), search.shortlisted

    faiss_times, kernel_times = [], []
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour slows both alike
        started = time.perf_counter()
        faiss_ids = run_faiss()
        faiss_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        result, shortlisted = run_kernel()
        kernel_times.append(time.perf_counter() - started)
    faiss_seconds, kernel_seconds = min(faiss_times), min(kernel_times)
    same = float(np.mean(result.ids == pids[faiss_ids]))
    checked = min(args.check_queries, args.queries)
    truth = np.array(exact_reference(queries[:checked], stored, pids, args.k))
    kernel_exact = float(np.mean(result.ids[:checked] == truth))
    if args.storage != "float32":  # faiss searched the float32 vectors: its own ground truth
        truth = np.array(exact_reference(queries[:checked], corpus, pids, args.k))
    faiss_exact = float(np.mean(pids[faiss_ids[:checked]] == truth))

    with tempfile.TemporaryDirectory() as tmp:
        for name, ids, vectors, column, per_file in (
            ("corpus", pids, stored, "pid", args.rows_per_file),
            (
                "queries",
                np.array([f"q{i:05d}" for i in range(args.queries)]),
                queries,
                "qid",
                args.queries,
            ),
        ):
            os.makedirs(os.path.join(tmp, name))
            for part, start in enumerate(range(0, len(ids), per_file)):
                table = pa.table(
                    {
                        column: ids[start : start + per_file],
                        "embedding": to_fixed_size_list(
                            vectors[start : start + per_file], str(vectors.dtype)
                        ),
                    }
                )
                pq.write_table(table, os.path.join(tmp, name, f"part-{part:04d}.parquet"))
        # The stage runs in a fresh process, so its peak memory is its own, not this script's.
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--stage", tmp, "--k", str(args.k)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        stage = json.loads(child.stdout.strip().splitlines()[-1])

    print(f"machine: {machine()}")
    print(
        f"corpus {args.corpus} x {args.dim} ({args.storage} storage), queries {args.queries},"
        f" k {args.k}; best of {args.repeats} interleaved runs"
    )
    print(f"faiss IndexFlatIP: {faiss_seconds:.2f} s (runs: {_seconds(faiss_times)})")
    print(
        f"pipeline kernel (in-process, blocks of {block}): {kernel_seconds:.2f} s"
        f" (runs: {_seconds(kernel_times)}) -> {faiss_seconds / kernel_seconds:.2f}x faiss;"
        f" shortlisted {shortlisted / args.queries:.0f} passages per query"
    )
    print(f"same neighbours as faiss {same:.4f}")
    print(
        f"equal to the float64 ground truth ({checked} queries): pipeline {kernel_exact:.4f},"
        f" faiss {faiss_exact:.4f}"
    )
    files = -(-args.corpus // args.rows_per_file)
    print(f"retrieval stage on Ray ({files} files): {stage['seconds']:.2f} s")
    print(PeakRss.describe(stage))


def _seconds(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


def stage_only(directory: str, k: int) -> None:
    """Run only the retrieval stage over ``directory`` and print its time and peak memory."""
    import ray

    from rerank_ray.local_ray import start_local_ray
    from rerank_ray.search import exact_search

    start_local_ray(include_dashboard=False, logging_level="ERROR")
    with PeakRss() as peaks:
        started = time.perf_counter()
        exact_search(
            os.path.join(directory, "corpus"),
            os.path.join(directory, "queries"),
            os.path.join(directory, "r.parquet"),
            k,
        )
        seconds = time.perf_counter() - started
    ray.shutdown()
    print(
        json.dumps(
            {
                "seconds": seconds,
                **peaks.to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main()
