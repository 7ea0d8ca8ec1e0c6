"""Embedding-stage memory against corpus size: a synthetic corpus through a tiny model.

For each size N, a corpus of N synthetic passages (about 16 words each, seeded) goes through
the pipeline's embedding stage (``rerank_ray.embed.embed_table``: Ray Data read, actor pool,
Parquet) with a tiny random BERT (2 layers, hidden 32, MiniLM's tokenizer), in a fresh process
whose driver and Ray worker memory are sampled every 20 ms. The vectors are checked: one per
passage, each of norm 1. Speed is not the point (the model is random); memory is.

Usage:
    python bench/embed_memory.py --passages 100000 1000000
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

from rerank_ray.embed import ROWS_PER_CALL  # noqa: E402


def tiny_model(directory: str) -> str:
    """A seeded random 2-layer BERT with MiniLM's tokenizer, saved for FlagEmbedding."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rerank_ray.models import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_corpus(path: str, rows: int, chunk: int = 100_000) -> None:
    """``rows`` passages written chunk by chunk (this process never holds them all)."""
    rng = np.random.default_rng(rows)
    words = np.array(WORDS)
    with pq.ParquetWriter(path, pa.schema([("pid", pa.string()), ("text", pa.string())])) as out:
        for start in range(0, rows, chunk):
            count = min(chunk, rows - start)
            picks = words[rng.integers(0, len(words), size=(count, 16))]
            texts = [" ".join(row) for row in picks]
            pids = [f"p{i:08d}" for i in range(start, start + count)]
            out.write_table(pa.table({"pid": pids, "text": texts}))


def stage_only(corpus: str, model: str, out: str, rows_per_call: int) -> None:
    """Run the embedding stage alone in this (fresh) process; print time, rows and peaks."""
    import ray

    from rerank_ray.embed import embed_table, embedding_files, embedding_matrix
    from rerank_ray.embedder import EmbedderOptions
    from rerank_ray.local_ray import start_local_ray

    start_local_ray(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    options = EmbedderOptions(
        pooling="mean", passage_max_length=64, batch_size=1024, max_tokens_per_batch=65536
    ).resolved(model)
    with PeakRss() as peaks:
        started = time.perf_counter()
        stats = embed_table(corpus, out, "corpus", model, options, rows_per_call=rows_per_call)
        seconds = time.perf_counter() - started
    ray.shutdown()
    rows, ids, worst = 0, set(), 0.0
    for path in embedding_files(out):  # checked file by file: the check holds no corpus either
        table = pq.read_table(path)
        norms = np.linalg.norm(embedding_matrix(table["embedding"]), axis=1)
        worst = max(worst, float(np.max(np.abs(norms - 1))))
        rows += table.num_rows
        ids.update(hash(p) for p in table["pid"].to_pylist())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": stats.rows,
                "rows_read_back": rows,
                "distinct_ids": len(ids),
                "max_norm_error": worst,
                **peaks.to_dict(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--rows-per-call",
        type=int,
        default=ROWS_PER_CALL,
        help="rows per actor call, hence per Ray Data block (default %(default)s)",
    )
    parser.add_argument(
        "--stage", nargs=3, metavar=("CORPUS", "MODEL", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.stage:
        stage_only(*args.stage, rows_per_call=args.rows_per_call)
        return
    print(f"machine: {machine()}; {args.rows_per_call} rows per actor call")
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(os.path.join(tmp, "tiny-bert"))
        for rows in args.passages:
            corpus = os.path.join(tmp, f"corpus-{rows}.parquet")
            synthetic_corpus(corpus, rows)
            child = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--stage", corpus, model,
                 os.path.join(tmp, f"embeddings-{rows}"),
                 "--rows-per-call", str(args.rows_per_call)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(child.stdout.strip().splitlines()[-1])
            assert result["rows"] == result["rows_read_back"] == result["distinct_ids"] == rows
            print(
                f"passages {rows}: embed stage {result['seconds']:.1f} s"
                f" ({rows / result['seconds']:.0f}/s); {PeakRss.describe(result)};"
                f" {result['rows']} vectors, one per"
                f" passage, max |norm - 1| {result['max_norm_error']:.1e}"
            )
            os.remove(corpus)


if __name__ == "__main__":
    main()
