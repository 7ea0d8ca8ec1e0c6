"""rerank-ray: evaluate embedding retrieval and cross-encoder reranking as Ray batch jobs.

Example::

    from rerank_ray import RunConfig, DataConfig, run_pipeline
    config = RunConfig(out="runs/seed", embedder="minilm",
                       data=DataConfig(dataset="dev.jsonl", corpus_rows=5000, num_queries=100))
    metrics = run_pipeline(config)
"""

from __future__ import annotations

from rerank_ray.config import ComputeConfig, RunConfig
from rerank_ray.datasets import DataConfig
from rerank_ray.embedder import EmbedderOptions
from rerank_ray.errors import ConfigError, DataError, UserError
from rerank_ray.pipeline import run_pipeline
from rerank_ray.rerank import RerankOptions
from rerank_ray.reranker import Reranker, RerankResult

__all__ = [
    "ComputeConfig",
    "ConfigError",
    "DataConfig",
    "DataError",
    "EmbedderOptions",
    "RerankOptions",
    "RerankResult",
    "Reranker",
    "RunConfig",
    "UserError",
    "run_pipeline",
]
__version__ = "0.1.0"
