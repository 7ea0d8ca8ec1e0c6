"""Exact top-k: the retrieval kernel and the Ray stage against faiss-cpu ``IndexFlatIP``.

Random unit vectors (seeded), N x dim corpus, Q queries, k neighbours. In one run:

* faiss-cpu ``IndexFlatIP.search`` (the baseline);
* the pipeline's kernel in-process (``rerank_ray.search.topk_of_block`` + ``merge_topk`` over
  blocks, as each Ray task runs it);
* the whole retrieval stage (``rerank_ray.search.exact_search``: Ray tasks over Parquet files,
  merge in the driver), with the driver's and the workers' peak memory.

Neighbours are compared with faiss's (ties aside: random float vectors have none in practice).

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
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def unit_vectors(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


class PeakRss:
    """Samples every 20 ms the resident memory of this process and of Ray's worker processes
    (``ray::`` titles).

    Sampled, not ``ru_maxrss``: Linux carries a parent's high-water mark into a child across
    fork and exec, so a child started by a big parent would report the parent's peak.
    """

    def __init__(self):
        self.peak_worker_bytes = 0
        self.peak_driver_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            self.peak_driver_bytes = max(self.peak_driver_bytes, me.memory_info().rss)
            for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
                title = " ".join(process.info["cmdline"] or [])
                if title.startswith("ray::") and process.info["memory_info"]:
                    self.peak_worker_bytes = max(
                        self.peak_worker_bytes, process.info["memory_info"].rss
                    )
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--stage", metavar="DIR", help=argparse.SUPPRESS)  # internal: child mode
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.stage:
        stage_only(args.stage, args.k)
        return

    import faiss

    from rerank_ray.embed import to_fixed_size_list
    from rerank_ray.search import merge_topk, topk_of_block

    corpus = unit_vectors(args.corpus, args.dim, 1)
    queries = unit_vectors(args.queries, args.dim, 2)
    pids = np.array([f"{i:08d}" for i in range(args.corpus)])

    index = faiss.IndexFlatIP(args.dim)
    index.add(corpus)
    started = time.perf_counter()
    faiss_scores, faiss_ids = index.search(queries, args.k)
    faiss_seconds = time.perf_counter() - started

    block = max(256, (1 << 26) // args.queries)
    started = time.perf_counter()
    result = None
    for start in range(0, args.corpus, block):
        scores = queries @ corpus[start : start + block].T
        result = merge_topk(
            result, topk_of_block(scores, pids[start : start + block], args.k), args.k
        )
    kernel_seconds = time.perf_counter() - started
    same = float(np.mean(result.ids == pids[faiss_ids]))

    with tempfile.TemporaryDirectory() as tmp:
        for name, ids, vectors, column, per_file in (
            ("corpus", pids, corpus, "pid", args.rows_per_file),
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
                        "embedding": to_fixed_size_list(vectors[start : start + per_file]),
                    }
                )
                pq.write_table(table, os.path.join(tmp, name, f"part-{part:04d}.parquet"))
        # The stage runs in a fresh process, so its peak memory is its own, not this script's.
        child = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--stage", tmp, "--k", str(args.k)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        stage = json.loads(child.stdout.strip().splitlines()[-1])

    mib = 1 << 20
    print(f"corpus {args.corpus} x {args.dim}, queries {args.queries}, k {args.k}")
    print(f"faiss IndexFlatIP: {faiss_seconds:.2f} s")
    print(
        f"pipeline kernel (in-process, blocks of {block}): {kernel_seconds:.2f} s -> {faiss_seconds / kernel_seconds:.2f}x faiss; same neighbours {same:.4f}"
    )
    files = -(-args.corpus // args.rows_per_file)
    print(f"retrieval stage on Ray ({files} files): {stage['seconds']:.2f} s")
    print(
        f"driver peak RSS {stage['driver_peak'] / mib:.0f} MiB, worker peak RSS {stage['worker_peak'] / mib:.0f} MiB"
    )


def stage_only(directory: str, k: int) -> None:
    """Run only the retrieval stage over ``directory`` and print its time and peak memory."""
    import ray

    from rerank_ray.search import exact_search

    ray.init(include_dashboard=False, logging_level="ERROR")
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
                "driver_peak": peaks.peak_driver_bytes,
                "worker_peak": peaks.peak_worker_bytes,
            }
        )
    )


if __name__ == "__main__":
    main()
