"""Run the embedding and retrieval stages on a simulated cluster whose worker nodes declare GPUs.

``ray.cluster_utils.Cluster`` starts a head (CPU only) and two worker nodes with
``num_gpus=1`` each on this machine; CUDA is absent, so the actors must land one per
declared GPU and still run, on the CPU, and the search tasks (one GPU each) likewise. The
first five passages' vectors serve as queries. Writes both stages' stats and the GPU nodes'
ids to RESULT_JSON for the test to check.

Usage: python tests/simulated_gpu_cluster.py CORPUS_PARQUET OUT_DIR RESULT_JSON
"""

from __future__ import annotations

import json
import os
import sys


def main(corpus_path: str, out_dir: str, result_path: str) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    from rerank_ray.embed import embed_table
    from rerank_ray.embedder import EmbedderOptions
    from rerank_ray.models import resolve_model_path
    from rerank_ray.pool import plan_resources
    from rerank_ray.search import exact_search

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
    )
    worker_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    try:
        resources = plan_resources(num_actors=2)  # a fixed pool: one actor per declared GPU
        options = EmbedderOptions().resolved(resolve_model_path("minilm"))
        stats = embed_table(
            corpus_path, out_dir, "corpus", "minilm", options, resources, rows_per_call=32
        )
        queries = (
            pq.read_table(out_dir).sort_by("pid").slice(0, 5).rename_columns(["qid", "embedding"])
        )
        os.makedirs(out_dir + "-queries")
        pq.write_table(queries, os.path.join(out_dir + "-queries", "part-0.parquet"))
        search = exact_search(out_dir, out_dir + "-queries", out_dir + "-retrieval.parquet", k=10)
        gpu_node_ids = sorted(node.node_id for node in worker_nodes)
        with open(result_path, "w") as handle:
            json.dump(
                {
                    "stats": stats.to_dict(),
                    "search": search.to_dict(),
                    "gpu_node_ids": gpu_node_ids,
                },
                handle,
            )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
