"""A run directory on S3 against the same run on the local disk, stage by stage.

The seed protocol at test size (400 passages, 60 queries, the top 10 reranked by the
smoke-test cross-encoder; the reranker's scores mean nothing, only its cost counts here),
with ``--no-cache``, three times in one Ray session: the dataset and run directory on the
local disk, then both on S3, then on the local disk again (the machine's noise shows in the
two local runs). The S3 endpoint is moto's server on this machine, so this measures what
the pipeline adds on top of an object store (listing, copies instead of renames, one
request per part file), not a network. The S3 run's metrics must equal the local run's.

Usage:
    python bench/object_store.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DEV_JSONL, machine, start_local_s3  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    endpoint, _ = start_local_s3()  # before Ray starts: its workers inherit the environment

    import pyarrow.fs as pafs

    from rerank_ray.config import ComputeConfig, RunConfig
    from rerank_ray.datasets import DataConfig
    from rerank_ray.local_ray import start_local_ray
    from rerank_ray.pipeline import RunDirectory, run_pipeline
    from rerank_ray.rerank import RerankOptions

    start_local_ray(include_dashboard=False, logging_level="WARNING")
    s3 = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
    s3.create_dir("bench")
    with s3.open_output_stream("bench/msmarco/dev.jsonl") as upload, open(DEV_JSONL, "rb") as f:
        upload.write(f.read())
    local = tempfile.mkdtemp(prefix="rerank-ray-bench-")
    runs = [
        ("local", str(DEV_JSONL), os.path.join(local, "first")),
        ("s3", "s3://bench/msmarco/dev.jsonl", "s3://bench/runs/seed"),
        ("local again", str(DEV_JSONL), os.path.join(local, "again")),
    ]
    results, metrics = [], {}
    for name, dataset, out in runs:
        config = RunConfig(
            out=out,
            data=DataConfig(dataset=dataset, corpus_rows=400, num_queries=60),
            embedder="minilm",
            top_k=100,
            rerank=RerankOptions(models="minilm-smoke", top_k=10, max_length=128),
            compute=ComputeConfig(rows_per_call=128),
            use_cache=False,
        )
        started = time.perf_counter()
        metrics[name] = run_pipeline(config)
        wall = time.perf_counter() - started
        stages = RunDirectory(config.out).read_manifest()["stages"]
        results.append(
            {
                "run": name,
                "wall_seconds": round(wall, 1),
                **{stage: round(stages[stage]["wall_seconds"], 1) for stage in stages},
            }
        )
    assert metrics["s3"] == metrics["local"], "the S3 run's metrics differ from the local run's"
    print(f"machine: {machine()}")
    print("| run | whole | prepare | embed | retrieve | rerank | evaluate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        cells = [row.get(k, "") for k in ("prepare", "embed", "retrieve", "rerank", "evaluate")]
        print(
            f"| {row['run']} | {row['wall_seconds']} s | "
            + " | ".join(f"{c} s" for c in cells)
            + " |"
        )
    print("metrics: the S3 run's equal the local run's")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
