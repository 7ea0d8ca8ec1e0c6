"""The retrieve stage end to end against a bare faiss-cpu script, as whole processes.

Seeded random unit vectors (``--corpus`` x ``--dim`` passages, ``--queries`` queries) are
written once under a directory outside the repository, as a run directory whose embed stage
imported them as supplied vectors (``rerank-ray embed --corpus-embeddings ...``). Then each
side runs as a user runs it, in its own process:

* the stage: ``rerank-ray retrieve --run DIR/run --top-k K -q`` (Ray, the exact top-k);
* bare faiss: ``python bench/retrieve_stage.py faiss DIR --k K``: read the run's Parquet
  vectors with pyarrow, ``faiss.IndexFlatIP``, search, write ``qid, pid, rank, score``.

Modes:

* ``setup DIR``: the vectors, the texts and qrels they need, and the run directory.
* ``faiss DIR``: the bare script (imports neither Ray nor rerank-ray); prints the BLAS core
  threadpoolctl reports and its phase times as one JSON line.
* ``check DIR``: the stage's ``retrieval.parquet`` against faiss's (overlap of the top-k
  sets) and both against a float64 brute force (ties by pid) on ``--check-queries`` queries.
* ``profile DIR``: the stage's phases in one process (read, shortlist, rescoring, selection,
  write, Ray) from the stage's own statistics.
* ``memory DIR``: the stage in this process with the peak memory of the driver and of its Ray
  workers (only this process's descendants), sampled.

Usage:
    python bench/retrieve_stage.py setup /tmp/rs-a --corpus 500000 --queries 1000
    rerank-ray retrieve --run /tmp/rs-a/run --top-k 100 -q
    python bench/retrieve_stage.py faiss /tmp/rs-a --k 100
    python bench/retrieve_stage.py check /tmp/rs-a --k 100
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

started = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))


def unit_vectors(rows: int, dim: int, seed: int, chunk: int = 1 << 17):
    """Yields ``(start, float32 unit vectors)`` chunks of a seeded ``rows x dim`` matrix."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk):
        vectors = rng.standard_normal((min(chunk, rows - start), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield start, vectors


def setup(args) -> None:
    """Vectors, texts and qrels under ``args.dir``, then ``rerank-ray embed`` with them supplied."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, os.path.join(HERE, ".."))
    from rerank_ray.embed import to_fixed_size_list

    root = args.dir
    for sub in ("vectors/corpus", "vectors/queries", "text"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for role, rows, seed, prefix, per_file in (
        ("corpus", args.corpus, 1, "", args.rows_per_file),
        ("queries", args.queries, 2, "q", args.queries),
    ):
        column = "pid" if role == "corpus" else "qid"
        with open(os.path.join(root, "text", f"{role}.tsv"), "w") as text:
            for start, vectors in unit_vectors(rows, args.dim, seed, per_file):
                ids = [f"{prefix}{i}" for i in range(start, start + len(vectors))]
                table = pa.table(
                    {column: ids, "embedding": to_fixed_size_list(vectors, args.storage)}
                )
                name = f"part-{start // per_file:05d}.parquet"
                pq.write_table(table, os.path.join(root, "vectors", role, name))
                text.writelines(f"{i}\t{role} {i}\n" for i in ids)
    with open(os.path.join(root, "text", "qrels.tsv"), "w") as qrels:
        qrels.writelines(f"q{i}\t0\t{i}\t1\n" for i in range(args.queries))
    command = [
        os.path.join(os.path.dirname(sys.executable), "rerank-ray"),
        "embed",
        *("--corpus", os.path.join(root, "text", "corpus.tsv")),
        *("--queries", os.path.join(root, "text", "queries.tsv")),
        *("--qrels", os.path.join(root, "text", "qrels.tsv")),
        *("--corpus-embeddings", os.path.join(root, "vectors", "corpus")),
        *("--query-embeddings", os.path.join(root, "vectors", "queries")),
        *("--embedder", "minilm", "--embedding-storage", args.storage, "--no-cache"),
        *("--out", os.path.join(root, "run"), "-q"),
    ]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": os.path.join(HERE, "..")})
    np.save(os.path.join(root, "setup.npy"), np.array([args.corpus, args.queries, args.dim]))


def bare_faiss(args) -> None:
    """What a user writes with faiss-cpu: read the vectors, IndexFlatIP, search, write."""
    import glob

    import faiss
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_info

    times = {"imports": time.perf_counter() - started}

    def read(role: str, column: str):
        files = sorted(glob.glob(os.path.join(args.dir, "run", "embeddings", role, "*.parquet")))
        table = pa.concat_tables(pq.read_table(f, columns=[column, "embedding"]) for f in files)
        embedding = table.column("embedding").combine_chunks()
        values = embedding.flatten().to_numpy(zero_copy_only=False)
        vectors = values.reshape(-1, embedding.type.list_size).astype(np.float32, copy=False)
        return table.column(column), vectors

    mark = time.perf_counter()
    pids, corpus = read("corpus", "pid")
    qids, queries = read("queries", "qid")
    times["read"] = time.perf_counter() - mark
    mark = time.perf_counter()
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    scores, rows = index.search(queries, args.k)
    times["search"] = time.perf_counter() - mark
    mark = time.perf_counter()
    k = rows.shape[1]
    table = pa.table(
        {
            "qid": pa.chunked_array(qids).take(np.repeat(np.arange(len(queries)), k)),
            "pid": pa.chunked_array(pids).take(rows.reshape(-1)),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(queries)),
            "score": scores.reshape(-1),
        }
    )
    pq.write_table(table, os.path.join(args.dir, "faiss.parquet"))
    times["write"] = time.perf_counter() - mark
    cores = sorted(
        {i.get("architecture", "?") for i in threadpool_info() if "openblas" in i["prefix"]}
    )
    print(json.dumps({"blas": cores, **{key: round(value, 3) for key, value in times.items()}}))


def check(args) -> None:
    """Overlap with faiss, and equality with a float64 brute force on a sample of queries."""
    import numpy as np
    import pyarrow.parquet as pq

    def ranking(path):
        table = pq.read_table(path).sort_by([("qid", "ascending"), ("rank", "ascending")])
        qids = table.column("qid").to_numpy(zero_copy_only=False)
        pids = table.column("pid").to_numpy(zero_copy_only=False)
        return qids, pids.reshape(len(np.unique(qids)), -1)

    qids, stage = ranking(os.path.join(args.dir, "run", "retrieval.parquet"))
    _, bare = ranking(os.path.join(args.dir, "faiss.parquet"))
    overlap = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(stage, bare)])
    same = float(np.mean(stage == bare))
    corpus_table = pq.read_table(os.path.join(args.dir, "run", "embeddings", "corpus"))
    query_table = pq.read_table(os.path.join(args.dir, "run", "embeddings", "queries"))
    corpus = _matrix(corpus_table).astype(np.float64)
    pids = corpus_table.column("pid").to_numpy(zero_copy_only=False)
    query_ids = query_table.column("qid").to_numpy(zero_copy_only=False)
    queries = _matrix(query_table).astype(np.float64)
    sample = np.random.default_rng(0).choice(len(stage), args.check_queries, replace=False)
    order = np.unique(qids[:: stage.shape[1]], return_index=True)[1]
    ordered_qids = qids[:: stage.shape[1]][np.sort(order)]
    stage_exact, bare_exact = [], []
    for row in sample:
        query = queries[np.flatnonzero(query_ids == ordered_qids[row])[0]]
        scores = corpus @ query
        truth = pids[np.lexsort((pids, -scores))[: stage.shape[1]]]
        stage_exact.append(np.array_equal(stage[row], truth))
        bare_exact.append(float(np.mean(bare[row] == truth)))
    print(
        json.dumps(
            {
                "queries": len(stage),
                "k": stage.shape[1],
                "top_k_overlap_with_faiss": round(float(overlap), 6),
                "same_rank_as_faiss": round(same, 6),
                "stage_equals_float64_truth": f"{sum(stage_exact)}/{len(sample)} queries",
                "faiss_positions_equal_to_truth": round(float(np.mean(bare_exact)), 6),
            }
        )
    )


def _matrix(table):

    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)


def memory(args) -> None:
    """The stage in this process (local Ray), with sampled peaks of it and its descendants."""
    import threading

    import psutil
    import ray

    sys.path.insert(0, os.path.join(HERE, ".."))
    from rerank_ray.local_ray import start_local_ray
    from rerank_ray.search import exact_search

    peaks = {"driver": 0, "driver_private": 0, "worker": 0, "worker_private": 0}
    stop = threading.Event()

    def sample():
        me = psutil.Process()
        while not stop.is_set():
            info = me.memory_info()
            peaks["driver"] = max(peaks["driver"], info.rss)
            peaks["driver_private"] = max(peaks["driver_private"], info.rss - info.shared)
            for child in me.children(recursive=True):
                try:
                    if not " ".join(child.cmdline()).startswith("ray::"):
                        continue
                    info = child.memory_info()
                except psutil.Error:
                    continue
                peaks["worker"] = max(peaks["worker"], info.rss)
                peaks["worker_private"] = max(peaks["worker_private"], info.rss - info.shared)
            time.sleep(0.02)

    start_local_ray(include_dashboard=False, logging_level="ERROR")
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    mark = time.perf_counter()
    run = os.path.join(args.dir, "run")
    stats = exact_search(
        os.path.join(run, "embeddings", "corpus"),
        os.path.join(run, "embeddings", "queries"),
        os.path.join(args.dir, "memory-retrieval.parquet"),
        args.k,
    )
    seconds = time.perf_counter() - mark
    stop.set()
    thread.join()
    ray.shutdown()
    mib = {key: round(value / (1 << 20)) for key, value in peaks.items()}
    print(json.dumps({"seconds": round(seconds, 2), "rows": stats.rows, "peak_mib": mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["setup", "faiss", "check", "memory"])
    parser.add_argument("dir", help="a directory outside the repository (local disk)")
    parser.add_argument("--corpus", type=int, default=500_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--storage", choices=["float32", "float16"], default="float32")
    parser.add_argument("--rows-per-file", type=int, default=262_144)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--check-queries", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    {"setup": setup, "faiss": bare_faiss, "check": check, "memory": memory}[args.mode](args)


if __name__ == "__main__":
    main()
