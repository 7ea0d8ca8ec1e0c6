"""What an output depends on: the one place that decides which options change vectors or scores.

The embedding cache key and the embed stage's key are both built from :func:`vector_options`;
the rerank stage's key from :func:`score_options`. An option that only changes speed (batch
sizes, token budgets, actor counts, rows per call) is in neither, so changing it reuses what
was computed; any option that changes a vector or a score is in both, so changing it
recomputes.

Example:
    >>> from rerank_ray.embedder import EmbedderOptions
    >>> fast = EmbedderOptions(pooling="mean", query_max_length=32, passage_max_length=64)
    >>> slow = EmbedderOptions(pooling="mean", query_max_length=32, passage_max_length=64,
    ...                        batch_size=8)
    >>> vector_options(fast, "corpus") == vector_options(slow, "corpus")
    True
    >>> vector_options(fast, "queries")["max_length"]
    32
"""

from __future__ import annotations

import hashlib
import json


def vector_options(options, role: str) -> dict:
    """The resolved embedding options that change the vectors of ``role`` (``corpus`` or
    ``queries``): pooling, max length, the query instruction, normalization, storage."""
    common = {
        "pooling": options.pooling,
        "normalize": options.normalize,
        "storage": options.storage,
    }
    if role == "queries":
        return {
            **common,
            "max_length": options.query_max_length,
            "instruction": options.query_instruction,
        }
    return {**common, "max_length": options.passage_max_length}


def score_options(options, model: str) -> dict:
    """The rerank options that change ``model``'s scores or which pairs are scored: the model
    name (its weights are keyed by fingerprint), the pair token limit and the depth."""
    return {"model": model, "max_length": options.max_length, "top_k": options.top_k}


def compute_precision(device: str) -> str:
    """The precision a model computes in where its actors ask for ``device``: float16 on GPUs
    (as FlagEmbedding does there), float32 on CPUs."""
    return "float16" if device == "cuda" else "float32"


def digest(payload) -> str:
    """Hex SHA-256 of a JSON-serializable payload (keys sorted)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
