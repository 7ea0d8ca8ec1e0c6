"""A LangChain document compressor over :class:`rerank_ray.reranker.Reranker`.

``RerankRayCompressor`` is a ``BaseDocumentCompressor``: give it to LangChain's
``ContextualCompressionRetriever`` (or call ``compress_documents`` after any retriever) and it
returns the ``top_n`` documents by the cross-encoder, best first. Each is a copy of the input
``Document`` (same ``page_content``, ``id`` and type) whose metadata, deep-copied, gains
``relevance_score`` (the key LangChain's Cohere and Jina rerankers set): the sigmoid of the
cross-encoder's logit. The input documents are never changed.

Needs the ``langchain`` extra (``pip install 'rerank-ray[langchain]'``, which installs
``langchain-core``); the rest of rerank-ray imports without it.

Example::

    from langchain_core.documents import Document
    from rerank_ray import Reranker
    from rerank_ray.langchain import RerankRayCompressor

    compressor = RerankRayCompressor(reranker=Reranker("BAAI/bge-reranker-large"), top_n=3)
    documents = [Document("The giant panda is a bear."), Document("Hello world.")]
    best = compressor.compress_documents(documents, "what is a panda?")
    best[0].metadata["relevance_score"]   # sigmoid of the logit, in (0, 1)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict

from rerank_ray.reranker import Reranker


class RerankRayCompressor(BaseDocumentCompressor):
    """Keep the ``top_n`` documents by a rerank-ray cross-encoder, each with its relevance score.

    Attributes:
        reranker: The cross-encoder (:class:`rerank_ray.reranker.Reranker`).
        top_n: Documents kept per query; ``None`` keeps all, reordered.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Reranker
    top_n: int | None = 3

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The best ``top_n`` documents for ``query``, best first; equal scores keep input order.

        Each returned document is a copy of its input with ``metadata["relevance_score"]``
        (``sigmoid(logit)``); the input documents and their metadata are left as they were.
        """
        documents = list(documents)
        texts = [document.page_content for document in documents]
        compressed = []
        for result in self.reranker.rerank(query, texts, top_n=self.top_n):
            original = documents[result.index]
            metadata = copy.deepcopy(original.metadata)
            metadata["relevance_score"] = result.relevance_score
            compressed.append(original.model_copy(update={"metadata": metadata}))
        return compressed
