"""Prepare-stage memory against corpus size: positives matched into a synthetic corpus.

The full-corpus layout (``--corpus`` a passage table with ``id`` and ``content``,
as ``namespace-Pt/msmarco-corpus``; ``--dataset`` queries with positive texts), at sizes
this machine can hold: for each size N, a synthetic corpus of N passages (about 16 words,
seeded) and a dataset of 1,000 queries whose positives are passages spread over the whole
corpus (its last row included). ``prepare_data`` runs in a fresh process whose driver and
Ray worker memory are sampled every 20 ms: the driver streams the corpus into its table,
then ``check_corpus`` (Ray Data: broadcast join with the positives, sort by pid)
matches the positives and checks the ids. Every query's qrels are checked against the pid
its positive was drawn from.

Then, measured apart in the same process, the import of precomputed embeddings for that
corpus (``--corpus-embeddings``: seeded random 32-dimensional vectors, one per passage, in
files of 100,000): ``import_embeddings`` streams and checks them, and ``check_ids`` (Ray
Data: sort by id) compares their ids with the corpus's. The import of every vector is
measured; then one is left out, and a second import must fail naming it.

Usage:
    python bench/prepare_memory.py --passages 100000 1000000
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
from common import WORDS, PeakRss, machine  # noqa: E402

QUERIES = 1000


DIMENSION = 32


def synthetic_layout(directory: str, rows: int, chunk: int = 100_000) -> dict[str, str]:
    """Write ``corpus.parquet`` (id, content), ``dev.jsonl`` and ``vectors/`` (pid,
    embedding; all but ``doc0`` in ``vectors/part-*``, that one in ``vectors-last/``);
    return {qid: expected pid}.

    Written chunk by chunk: this process never holds the corpus either.
    """
    rng = np.random.default_rng(rows)
    words = np.array(WORDS)
    positives = set(np.linspace(0, rows - 1, QUERIES).astype(int).tolist())
    texts_of_positives: dict[int, str] = {}
    schema = pa.schema([("id", pa.string()), ("content", pa.string())])
    vectors = os.path.join(directory, "vectors")
    os.makedirs(vectors)
    vector_rng = np.random.default_rng([rows, 1])  # apart: the texts stay as they were
    with pq.ParquetWriter(os.path.join(directory, "corpus.parquet"), schema) as out:
        for start in range(0, rows, chunk):
            count = min(chunk, rows - start)
            write_vectors(
                os.path.join(vectors, f"part-{start:09d}.parquet"), vector_rng, start, count
            )
            picks = words[rng.integers(0, len(words), size=(count, 16))]
            # the row number makes each text unique (16 words of 23 could repeat)
            texts = [f"{start + i} " + " ".join(row) for i, row in enumerate(picks)]
            out.write_table(
                pa.table(
                    {"id": [f"doc{start + i}" for i in range(count)], "content": texts},
                    schema=schema,
                )
            )
            for row in positives:
                if start <= row < start + count:
                    texts_of_positives[row] = texts[row - start]
    expected = {}
    with open(os.path.join(directory, "dev.jsonl"), "w", encoding="utf-8") as handle:
        for qid, row in enumerate(sorted(texts_of_positives)):
            record = {"query": f"query {qid}", "positive": [texts_of_positives[row]]}
            handle.write(json.dumps(record) + "\n")
            expected[str(qid)] = f"doc{row}"
    return expected


def write_vectors(path: str, rng: np.random.Generator, start: int, count: int) -> None:
    """Random unit vectors for ``doc{start}`` … (``doc0`` goes to ``vectors-last/``)."""
    first = max(start, 1)
    matrix = rng.standard_normal((start + count - first, DIMENSION)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), DIMENSION)
    pids = [f"doc{i}" for i in range(first, start + count)]
    pq.write_table(pa.table({"pid": pids, "embedding": embedding}), path)
    if start == 0:
        last = os.path.join(os.path.dirname(os.path.dirname(path)), "vectors-last")
        os.makedirs(last)
        vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix[0]), DIMENSION)
        pq.write_table(
            pa.table({"pid": ["doc0"], "embedding": vector}), os.path.join(last, "part.parquet")
        )


def import_vectors(directory: str, corpus_path: str) -> dict:
    """Import every vector (measured), then the vectors without ``doc0``: that must fail,
    naming it, and leave no output. The failing import comes second so that what it leaves
    in the allocators does not count in the measured one."""
    import shutil

    from rerank_ray.errors import DataError
    from rerank_ray.supplied import import_embeddings

    vectors = os.path.join(directory, "vectors")
    last = os.path.join(directory, "vectors-last", "part.parquet")
    shutil.copy(last, os.path.join(vectors, "part-last.parquet"))
    with PeakRss() as peaks:
        started = time.perf_counter()
        rows = import_embeddings(vectors, corpus_path, "pid", os.path.join(directory, "full"))
        seconds = time.perf_counter() - started
    os.remove(os.path.join(vectors, "part-last.parquet"))
    target = os.path.join(directory, "out", "embeddings")
    try:
        import_embeddings(vectors, corpus_path, "pid", target)
        raise AssertionError("the import of vectors without doc0 passed")
    except DataError as error:
        assert "1 pids" in str(error) and "doc0" in str(error), error
    assert not os.path.exists(target)
    return {"seconds": seconds, "rows": rows, **peaks.to_dict()}


def stage_only(directory: str) -> None:
    """Run the prepare stage alone in this (fresh) process; print time, counts and peaks."""
    import ray

    from rerank_ray.datasets import DataConfig, prepare_data
    from rerank_ray.local_ray import start_local_ray
    from rerank_ray.tables import read_qrels

    start_local_ray(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    config = DataConfig(
        dataset=os.path.join(directory, "dev.jsonl"),
        corpus=os.path.join(directory, "corpus.parquet"),
    )
    with PeakRss() as peaks:
        started = time.perf_counter()
        prepared = prepare_data(config, os.path.join(directory, "out"))
        seconds = time.perf_counter() - started
    supplied = import_vectors(directory, prepared.corpus_path)
    ray.shutdown()
    qrels = read_qrels(prepared.qrels_path)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "corpus_rows": prepared.num_corpus,
                "qrels": {qid: sorted(pids) for qid, pids in qrels.items()},
                "supplied": supplied,
                **peaks.to_dict(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--stage", metavar="DIRECTORY", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.stage:
        stage_only(args.stage)
        return
    print(f"machine: {machine()}")
    for rows in args.passages:
        with tempfile.TemporaryDirectory() as tmp:
            expected = synthetic_layout(tmp, rows)
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--stage", tmp],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
        result = json.loads(child.stdout.strip().splitlines()[-1])
        assert result["corpus_rows"] == rows
        supplied = result["supplied"]
        assert supplied["rows"] == rows
        assert result["qrels"] == {qid: [pid] for qid, pid in expected.items()}
        print(
            f"passages {rows}: prepare stage {result['seconds']:.1f} s"
            f" ({rows / result['seconds']:.0f}/s); {PeakRss.describe(result)};"
            f" {len(expected)} queries, each positive matched to the passage it was drawn from"
        )
        print(
            f"passages {rows}: import of {rows} precomputed vectors {supplied['seconds']:.1f} s;"
            f" {PeakRss.describe(supplied)}; with one vector left out, the import named it"
        )


if __name__ == "__main__":
    main()
