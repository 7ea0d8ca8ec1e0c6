"""Reranking for applications: one query, a list of documents, the best first.

The same scoring as the pipeline's rerank stage (:class:`rerank_ray.cross_encoder.CrossEncoder`,
equal to ``FlagReranker.compute_score``), with the conventions RAG code expects: results
carry the raw ``score`` (logit) and ``relevance_score`` (its sigmoid, as
sentence-transformers' ``CrossEncoder.predict`` and Langchain-Chatchat report it). Documents
may be strings or objects with a ``page_content`` attribute (LangChain's ``Document``); they
are returned as given, never changed. The framework adapters build on this class:
:mod:`rerank_ray.langchain` (a document compressor whose copies carry
``metadata["relevance_score"]``) and :mod:`rerank_ray.llamaindex` (a node postprocessor).

Example::

    from rerank_ray import Reranker
    reranker = Reranker("BAAI/bge-reranker-large")
    results = reranker.rerank("what is panda?", ["hi", "The giant panda is a bear."], top_n=1)
    results[0].index, results[0].document
    # (1, 'The giant panda is a bear.')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerank_ray.cross_encoder import CrossEncoder, sigmoid


@dataclass(frozen=True)
class RerankResult:
    """One reranked document.

    Attributes:
        index: Position of the document in the input list.
        document: The input object itself (a string or a document object).
        score: The cross-encoder's raw score (logit).
        relevance_score: ``sigmoid(score)``, in (0, 1).
    """

    index: int
    document: Any
    score: float
    relevance_score: float


def document_text(document: Any) -> str:
    """The text of a string, or of an object with ``page_content`` (LangChain's ``Document``)."""
    if isinstance(document, str):
        return document
    text = getattr(document, "page_content", None)
    if not isinstance(text, str):
        raise TypeError(
            f"documents must be strings or have a str page_content, got {type(document).__name__}"
        )
    return text


class Reranker:
    """A cross-encoder for reranking documents of one query at a time.

    Args:
        model: ``BAAI/bge-reranker-large``, ``BAAI/bge-reranker-v2-m3``, any local directory
            with a sequence-classification model, or ``minilm-smoke`` (tests only: its
            scores mean nothing).
        device: ``cuda``, ``cuda:1``, ``cpu``; ``None`` uses CUDA when torch sees a GPU
            (fp16 there, float32 on CPUs).
        batch_size: Most pairs per forward pass.
        max_length: Token limit of a (query, document) pair; longer documents are cut.

    Attributes:
        path: The resolved local model directory.
    """

    def __init__(
        self,
        model: str = "BAAI/bge-reranker-large",
        device: str | None = None,
        batch_size: int = 32,
        max_length: int = 512,
    ):
        self._encoder = CrossEncoder(
            model, device=device, batch_size=batch_size, max_length=max_length
        )
        self.model_name = model
        self.path = self._encoder.path
        self.device = self._encoder.device

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Raw scores of ``(query, passage)`` pairs, equal to ``FlagReranker.compute_score``."""
        return [float(s) for s in self._encoder.score(list(pairs))]

    def rerank(
        self, query: str, documents: Sequence[Any], top_n: int | None = None
    ) -> list[RerankResult]:
        """Score every document against ``query`` and return them best first.

        Args:
            query: The query text.
            documents: Strings, or objects with ``page_content`` (and ``metadata``).
            top_n: Keep only the best ``top_n``; ``None`` (or more than given) keeps all.

        Returns:
            Results sorted by score, descending; equal scores keep their input order. The
            documents are not changed: each result holds its input object as given.
        """
        if top_n is not None and top_n < 0:
            raise ValueError(f"top_n must be >= 0, got {top_n}")
        documents = list(documents)
        if not documents:
            return []
        texts = [document_text(d) for d in documents]
        scores = self._encoder.score([(query, text) for text in texts])
        order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
        results = []
        for index in order[:top_n] if top_n is not None else order:
            relevance = float(sigmoid(scores[index]))
            results.append(RerankResult(index, documents[index], float(scores[index]), relevance))
        return results
