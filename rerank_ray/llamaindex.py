"""A LlamaIndex node postprocessor over :class:`rerank_ray.reranker.Reranker`.

``RerankRayPostprocessor`` is a ``BaseNodePostprocessor`` that works as LlamaIndex's own
``SentenceTransformerRerank``: each node is scored on its text with the metadata LlamaIndex
embeds (``get_content(metadata_mode=MetadataMode.EMBED)``), and the ``top_n`` come back best
first as ``NodeWithScore`` whose ``score`` is the relevance score, the sigmoid of the
cross-encoder's logit (what ``CrossEncoder.predict`` gives a one-label model). Unlike
``SentenceTransformerRerank`` it never changes its input: the returned ``NodeWithScore`` are
new, and with ``keep_retrieval_score`` the node is a copy whose metadata gains
``retrieval_score``.

Needs the ``llamaindex`` extra (``pip install 'rerank-ray[llamaindex]'``, which installs
``llama-index-core``); the rest of rerank-ray imports without it.

Example::

    from llama_index.core.schema import NodeWithScore, TextNode
    from rerank_ray import Reranker
    from rerank_ray.llamaindex import RerankRayPostprocessor

    postprocessor = RerankRayPostprocessor(Reranker("BAAI/bge-reranker-large"), top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in ("a panda", "hello")]
    best = postprocessor.postprocess_nodes(nodes, query_str="what is a panda?")
    best[0].score   # sigmoid of the logit, in (0, 1)
"""

from __future__ import annotations

import copy

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from rerank_ray.reranker import Reranker


class RerankRayPostprocessor(BaseNodePostprocessor):
    """Keep the ``top_n`` nodes by a rerank-ray cross-encoder, scored by relevance.

    Args:
        reranker: The cross-encoder (:class:`rerank_ray.reranker.Reranker`).
        top_n: Nodes kept per query; ``None`` keeps all, reordered.
        keep_retrieval_score: Return copies of the nodes with the incoming score in
            ``metadata["retrieval_score"]``, as ``SentenceTransformerRerank`` does.
    """

    model: str = Field(description="The reranker's model name.")
    top_n: int | None = Field(default=2, description="Nodes kept, best first.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the incoming score in metadata['retrieval_score']."
    )
    _reranker: Reranker = PrivateAttr()

    def __init__(
        self, reranker: Reranker, top_n: int | None = 2, keep_retrieval_score: bool = False
    ):
        super().__init__(
            model=reranker.model_name, top_n=top_n, keep_retrieval_score=keep_retrieval_score
        )
        self._reranker = reranker

    @classmethod
    def class_name(cls) -> str:
        return "RerankRayPostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: self.top_n,
            },
        ) as event:
            results = self._reranker.rerank(query_bundle.query_str, texts, top_n=self.top_n)
            reranked = []
            for result in results:
                incoming = nodes[result.index]
                node = incoming.node
                if self.keep_retrieval_score:
                    metadata = copy.deepcopy(node.metadata)
                    metadata["retrieval_score"] = incoming.score
                    node = node.model_copy(update={"metadata": metadata})
                reranked.append(NodeWithScore(node=node, score=result.relevance_score))
            event.on_end(payload={EventPayload.NODES: reranked})
        return reranked
