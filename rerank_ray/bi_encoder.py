"""A second stage from an embedding model: ``--reranker bi:MODEL`` rescores each (query,
passage) pair by the inner product of their embeddings.

It is dense rescoring: a real method for candidates another retriever found (BM25's, a run
file), and a second stage the offline model can run. The model is any embedder
(``bi:minilm``, ``bi:BAAI/bge-m3``, a local folder) with its own defaults (pooling, max
lengths, normalization: :meth:`rerank_ray.embedder.EmbedderOptions.resolved`); a pair's score
equals the dense retrieval's score of that pair with the same model and options. Its
``relevance_score`` (the sigmoid of the score) is reported as for a cross-encoder but is not
a calibrated probability.

Example::

    scorer = BiEncoderScorer("bi:minilm")
    scorer.score([("what is a panda?", "The giant panda is a bear.")])
    # array([0.7...], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rerank_ray.embedder import BatchStats, Embedder, EmbedderOptions
from rerank_ray.models import ResolvedModel, resolve_model

#: What marks an embedding model given as ``--reranker``.
PREFIX = "bi:"


def is_bi_encoder(name: str) -> bool:
    """Whether the reranker ``name`` is an embedding model (``bi:…``)."""
    return name.startswith(PREFIX)


def resolve_reranker(name: str) -> ResolvedModel:
    """A reranker name resolved to its folder and fingerprint: ``bi:MODEL`` as an embedder
    (the name keeps its prefix), anything else as a cross-encoder."""
    if is_bi_encoder(name):
        model = resolve_model(name[len(PREFIX) :])
        return ResolvedModel(name, model.path, model.fingerprint)
    from rerank_ray.cross_encoder import RERANKER_ALIASES

    return resolve_model(name, RERANKER_ALIASES)


class BiEncoderScorer:
    """Scores pairs like :class:`~rerank_ray.cross_encoder.CrossEncoder` does (same
    ``score``, ``stats``, ``device``), with an embedding model: each distinct query and each
    passage is embedded once per call, a pair's score is their inner product.

    Args:
        model: ``bi:`` and an embedder's alias, folder or Hub name.
        device: ``cuda``, ``cpu``…; ``None`` picks CUDA when torch sees it.
        batch_size: Most texts per forward pass.
        max_tokens_per_batch: Most padded tokens per forward pass.
    """

    def __init__(
        self,
        model: str,
        device: str | None = None,
        batch_size: int = 64,
        max_tokens_per_batch: int = 16_384,
    ):
        name = model[len(PREFIX) :] if is_bi_encoder(model) else model
        options = EmbedderOptions(batch_size=batch_size, max_tokens_per_batch=max_tokens_per_batch)
        self.embedder = Embedder(name, options, device)
        self.path = self.embedder.path
        self.device = self.embedder.device
        self.stats = BatchStats()

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Inner products of the pairs' embeddings, as float32, in input order."""
        if len(pairs) == 0:
            return np.zeros(0, dtype=np.float32)
        queries = list(dict.fromkeys(q for q, _ in pairs))
        where = {q: i for i, q in enumerate(queries)}
        query_vectors = self.embedder.encode_queries(queries)
        passage_vectors = self.embedder.encode_corpus([p for _, p in pairs])
        rows = np.fromiter((where[q] for q, _ in pairs), dtype=np.int64, count=len(pairs))
        scores = np.einsum("ij,ij->i", query_vectors[rows], passage_vectors)
        seen = self.embedder.stats
        self.stats.rows += len(pairs)
        self.stats.truncated, self.stats.tokens = seen.truncated, seen.tokens
        self.stats.padded_tokens = seen.padded_tokens
        return scores.astype(np.float32)
