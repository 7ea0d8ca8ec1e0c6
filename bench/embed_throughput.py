"""Embedding: the pipeline against a bare FlagModel.encode, whole processes and stage alone.

The same N MS MARCO passages (and Q queries) go through both, in one run, one after the other:

1. Whole processes, timed from outside: the bare script ``bench/bare_retrieval.py``
   (FlagModel.encode + numpy top-k + recall) against ``rerank-ray run --reranker none
   --no-cache`` with 1 and with 2 embedding actors (the scaling curve). Their recalls must
   agree.
2. The stage alone, in this process: one bare ``encode_corpus`` call (its own length sort)
   against ``rerank_ray.embed.embed_table`` on a running Ray (read Parquet, actor pool, write
   Parquet; its time includes starting the actor and loading the model; ``ray.init`` apart).

Usage:
    python bench/embed_throughput.py --passages 2000 --queries 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from common import machine, msmarco_rows, timer, unique_passages  # noqa: E402


def dataset_with_passages(count: int, path: str) -> None:
    """The first dev rows whose positives make exactly ``count`` unique passages, as JSONL."""
    rows, seen = [], set()
    for row in msmarco_rows(10 * count):
        fresh = [t for t in dict.fromkeys(row["positive"]) if t not in seen]
        keep = fresh[: count - len(seen)]
        seen.update(keep)
        if keep or not fresh:
            rows.append({**row, "positive": [t for t in row["positive"] if t in seen]})
        if len(seen) == count:
            break
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def timed_process(command: list[str], env: dict | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def whole_processes(args, model_path: str, tmp: str) -> None:
    """Part 1: the bare script and ``rerank-ray run`` as whole processes."""
    dataset = os.path.join(tmp, "dev-subset.jsonl")
    dataset_with_passages(args.passages, dataset)
    bench = os.path.dirname(os.path.abspath(__file__))
    bare_seconds, out = timed_process(
        [sys.executable, os.path.join(bench, "bare_retrieval.py"), dataset, model_path,
         "--queries", str(args.queries), "--k", "100"]
    )  # fmt: skip
    bare = json.loads(out.strip().splitlines()[-1])
    phases = ", ".join(
        f"{k} {v:.1f} s" for k, v in bare["times"].items() if k != "total_in_process"
    )
    print(f"bare script (whole process): {bare_seconds:.1f} s ({phases})")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    for actors in args.actors:
        run = os.path.join(tmp, f"run-{actors}")
        seconds, _ = timed_process(
            [sys.executable, "-m", "rerank_ray.cli", "run", "--dataset", dataset,
             "--num-queries", str(args.queries), "--embedder", args.model, "--reranker", "none",
             "--no-cache", "--top-k", "100", "--num-actors", str(actors), "--out", run, "--quiet"],
            env,
        )  # fmt: skip
        stages = read_json(os.path.join(run, "manifest.json"))["stages"]
        metrics = read_json(os.path.join(run, "metrics.json"))["retrieval"]
        corpus = stages["embed"]["corpus"]
        same = all(
            abs(metrics[k] - bare[k]) < 1e-9 for k in ("recall@1", "recall@10", "recall@100")
        )
        walls = ", ".join(f"{k} {v['wall_seconds']:.1f} s" for k, v in stages.items())
        print(
            f"rerank-ray run --num-actors {actors} (whole process): {seconds:.1f} s ({walls});"
            f" corpus {corpus['rows_per_second']:.1f} passages/s incl. actor start;"
            f" ratio bare/pipeline {bare_seconds / seconds:.2f}; recalls equal to bare: {same}"
        )
    print(
        f"bare encode only: {bare['passages'] / bare['times']['encode_corpus']:.1f} passages/s;"
        f" recall@1/10/100 {bare['recall@1']:.4f} / {bare['recall@10']:.4f} / {bare['recall@100']:.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--model", default="minilm")
    parser.add_argument(
        "--actors",
        type=lambda text: [int(a) for a in text.split(",")],
        default=[1, 2],
        help="embedding actor counts of the whole-process runs (default: 1,2)",
    )
    parser.add_argument(
        "--rows-per-call", type=int, default=4096, help="as the pipeline's (default: 4096)"
    )
    parser.add_argument("--skip-stage", action="store_true", help="only the whole processes")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from rerank_ray.models import resolve_model_path

    print(f"machine: {machine()}")
    path = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        whole_processes(args, path, tmp)
    if args.skip_stage:
        return
    stage_alone(args, path)


def stage_alone(args, path: str) -> None:
    """Part 2: one bare encode call against the embedding stage, in this process."""
    from rerank_ray.embed import embed_table, embedding_matrix
    from rerank_ray.embedder import EmbedderOptions
    from rerank_ray.pool import plan_resources

    texts = unique_passages(args.passages)
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
        from rerank_ray.local_ray import start_local_ray

        start_local_ray(include_dashboard=False, logging_level="WARNING")
    resources = plan_resources()
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
