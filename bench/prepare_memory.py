"""Prepare-stage memory against corpus size: positives matched into a synthetic corpus.

The full-corpus layout of issue 4 (``--corpus`` a passage table with ``id`` and ``content``,
as ``namespace-Pt/msmarco-corpus``; ``--dataset`` queries with positive texts), at sizes
this machine can hold: for each size N, a synthetic corpus of N passages (about 16 words,
seeded) and a dataset of 1,000 queries whose positives are passages spread over the whole
corpus (its last row included). ``prepare_data`` runs in a fresh process whose driver and
Ray worker memory are sampled every 20 ms: the driver streams the corpus into its table,
then ``check_corpus`` (Ray Data: broadcast join with the positives, sort by pid)
matches the positives and checks the ids. Every query's qrels are checked against the pid
its positive was drawn from.

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


def synthetic_layout(directory: str, rows: int, chunk: int = 100_000) -> dict[str, str]:
    """Write ``corpus.parquet`` (id, content) and ``dev.jsonl``; return {qid: expected pid}.

    Written chunk by chunk: this process never holds the corpus either.
    """
    rng = np.random.default_rng(rows)
    words = np.array(WORDS)
    positives = set(np.linspace(0, rows - 1, QUERIES).astype(int).tolist())
    texts_of_positives: dict[int, str] = {}
    schema = pa.schema([("id", pa.string()), ("content", pa.string())])
    with pq.ParquetWriter(os.path.join(directory, "corpus.parquet"), schema) as out:
        for start in range(0, rows, chunk):
            count = min(chunk, rows - start)
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


def stage_only(directory: str) -> None:
    """Run the prepare stage alone in this (fresh) process; print time, counts and peaks."""
    import ray

    from rerank_ray.datasets import DataConfig, prepare_data, read_qrels

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    config = DataConfig(
        dataset=os.path.join(directory, "dev.jsonl"),
        corpus=os.path.join(directory, "corpus.parquet"),
    )
    with PeakRss() as peaks:
        started = time.perf_counter()
        prepared = prepare_data(config, os.path.join(directory, "out"))
        seconds = time.perf_counter() - started
    ray.shutdown()
    qrels = read_qrels(prepared.qrels_path)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "corpus_rows": prepared.num_corpus,
                "qrels": {qid: sorted(pids) for qid, pids in qrels.items()},
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
        assert result["qrels"] == {qid: [pid] for qid, pid in expected.items()}
        print(
            f"passages {rows}: prepare stage {result['seconds']:.1f} s"
            f" ({rows / result['seconds']:.0f}/s); {PeakRss.describe(result)};"
            f" {len(expected)} queries, each positive matched to the passage it was drawn from"
        )


if __name__ == "__main__":
    main()
