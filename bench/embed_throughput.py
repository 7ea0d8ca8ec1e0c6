"""Embedding throughput: the pipeline's Ray Data actor pool against a bare FlagModel.encode.

The same N MS MARCO passages go through both, in one run, one after the other:

* bare: ``FlagModel(...)`` then one ``encode_corpus`` call on all texts (its own length sort);
* pipeline: ``rerank_ray.embed.embed_table`` on a running Ray: read Parquet, actor pool,
  write Parquet. Its time includes starting the actor and loading the model in it; Ray's
  own start-up is reported apart.

Usage:
    python bench/embed_throughput.py --passages 2000
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
from common import machine, timer, unique_passages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--rows-per-call", type=int, default=1024)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from rerank_ray.embed import embed_table, embedding_matrix, plan_resources
    from rerank_ray.models import EmbedderOptions, resolve_model_path

    texts = unique_passages(args.passages)
    path = resolve_model_path(args.model)
    options = EmbedderOptions().resolved(path)
    times: dict = {}

    from FlagEmbedding import FlagModel

    with timer(times, "bare_load"):
        bare_model = FlagModel(
            path,
            pooling_method=options.pooling,
            use_fp16=False,
            devices=["cpu"],
            passage_max_length=options.passage_max_length,
        )
    with timer(times, "bare_encode"):
        bare = bare_model.encode_corpus(texts)
    del bare_model

    import ray

    with timer(times, "ray_init"):
        ray.init(include_dashboard=False, logging_level="WARNING")
    resources = plan_resources(args.actors)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.parquet")
        pq.write_table(
            pa.table({"pid": [str(i) for i in range(len(texts))], "text": texts}), corpus
        )
        out = os.path.join(tmp, "embeddings")
        with timer(times, "pipeline_embed"):
            embed_table(corpus, out, "corpus", args.model, options, resources, args.rows_per_call)
        table = pq.read_table(out)
    ray.shutdown()
    order = np.argsort(np.asarray(table["pid"].to_pylist(), dtype=int))
    ours = embedding_matrix(table["embedding"])[order]
    min_cosine = float(np.min(np.sum(ours * bare, axis=1)))

    n = len(texts)
    bare_total = times["bare_load"] + times["bare_encode"]
    print(f"machine: {machine()}")
    print(f"passages: {n}, model: {args.model}, resources: {resources.to_dict()}")
    print(
        f"bare FlagModel: load {times['bare_load']:.1f} s + encode {times['bare_encode']:.1f} s"
        f" = {bare_total:.1f} s -> {n / bare_total:.1f} passages/s"
        f" (encode only {n / times['bare_encode']:.1f}/s)"
    )
    print(
        f"pipeline embed stage: {times['pipeline_embed']:.1f} s -> {n / times['pipeline_embed']:.1f}"
        f" passages/s (plus ray.init {times['ray_init']:.1f} s)"
    )
    print(
        f"ratio pipeline/bare throughput (load+encode vs stage): {bare_total / times['pipeline_embed']:.2f}"
    )
    print(f"min cosine pipeline vs bare: {min_cosine:.6f}")


if __name__ == "__main__":
    main()
