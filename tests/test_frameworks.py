"""The LangChain compressor and the LlamaIndex postprocessor, inside the real frameworks.

Scores are checked against ``FlagReranker.compute_score(normalize=True)`` on the same pairs,
and the LlamaIndex postprocessor against LlamaIndex's own ``SentenceTransformerRerank`` on the
same model; no pair reaches the 512-token limit, so no truncation rule is involved.
"""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from rerank_ray import Reranker
from rerank_ray.cross_encoder import build_smoke_reranker

QUERY_ROW = 3  # the query of this dev row is reranked over the positives of the first rows
NUM_DOCUMENTS = 10


@pytest.fixture(scope="module")
def reranker():
    return Reranker("minilm-smoke", device="cpu", batch_size=4, max_length=512)


@pytest.fixture(scope="module")
def oracle():
    """relevance scores of pairs by a FlagReranker built here, one pair per pass."""
    from FlagEmbedding import FlagReranker

    flag = FlagReranker(build_smoke_reranker(), use_fp16=False, devices=["cpu"], batch_size=1)
    return lambda pairs: [float(s) for s in flag.compute_score(pairs, normalize=True)]


@pytest.fixture(scope="module")
def passages(msmarco):
    with open(msmarco / "dev.jsonl") as handle:
        rows = [json.loads(next(handle)) for _ in range(NUM_DOCUMENTS)]
    return rows[QUERY_ROW]["query"], [r["positive"][0] for r in rows]


def best_first(scores, top_n):
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:top_n]


# LangChain


@pytest.fixture(scope="module")
def compression_retriever():
    """A ContextualCompressionRetriever as langchain-classic defines it, on langchain-core's
    BaseRetriever: the base retriever's documents, compressed for the query."""
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.retrievers import BaseRetriever

    class ListRetriever(BaseRetriever):
        documents: list[Document]

        def _get_relevant_documents(self, query, *, run_manager):
            return list(self.documents)

    class CompressionRetriever(BaseRetriever):
        base_retriever: BaseRetriever
        base_compressor: BaseDocumentCompressor

        def _get_relevant_documents(self, query, *, run_manager: CallbackManagerForRetrieverRun):
            documents = self.base_retriever.invoke(
                query, config={"callbacks": run_manager.get_child()}
            )
            return list(
                self.base_compressor.compress_documents(
                    documents, query, callbacks=run_manager.get_child()
                )
            )

    return ListRetriever, CompressionRetriever


def langchain_documents(texts):
    from langchain_core.documents import Document

    return [
        Document(t, id=f"doc-{i}", metadata={"pid": i, "source": {"dataset": "msmarco-dev"}})
        for i, t in enumerate(texts)
    ]


def test_langchain_retriever_returns_top_n_copies_scored_as_flagreranker(
    reranker, oracle, passages, compression_retriever
):
    from langchain_core.documents import Document

    from rerank_ray.langchain import RerankRayCompressor

    query, texts = passages
    documents = langchain_documents(texts)
    before = copy.deepcopy(documents)
    ListRetriever, CompressionRetriever = compression_retriever
    retriever = CompressionRetriever(
        base_retriever=ListRetriever(documents=documents),
        base_compressor=RerankRayCompressor(reranker=reranker, top_n=3),
    )
    found = retriever.invoke(query)

    expected = oracle([(query, t) for t in texts])
    order = best_first(expected, 3)
    assert [d.id for d in found] == [f"doc-{i}" for i in order]
    for document, index in zip(found, order):
        assert type(document) is Document and document is not documents[index]
        assert document.page_content == texts[index]
        assert document.metadata.pop("relevance_score") == pytest.approx(expected[index], abs=1e-6)
        assert document.metadata == before[index].metadata
        assert document.metadata["source"] is not documents[index].metadata["source"]
    assert documents == before  # the inputs' metadata is unchanged


def test_langchain_top_n_all_empty_and_async(reranker, oracle, passages):
    from rerank_ray.langchain import RerankRayCompressor

    query, texts = passages
    documents = langchain_documents(texts[:4])
    expected = oracle([(query, t) for t in texts[:4]])
    every = RerankRayCompressor(reranker=reranker, top_n=None)
    assert [d.metadata["pid"] for d in every.compress_documents(documents, query)] == best_first(
        expected, 4
    )
    more = RerankRayCompressor(reranker=reranker, top_n=10)
    assert len(more.compress_documents(documents, query)) == 4
    assert more.compress_documents([], query) == []
    found = asyncio.run(
        RerankRayCompressor(reranker=reranker).acompress_documents(documents, query)
    )
    assert [d.metadata["pid"] for d in found] == best_first(expected, 3)  # top_n defaults to 3
    assert all("relevance_score" not in d.metadata for d in documents)


# LlamaIndex


def llama_nodes(texts):
    from llama_index.core.schema import NodeWithScore, TextNode

    return [
        NodeWithScore(
            node=TextNode(text=t, id_=f"node-{i}", metadata={"title": f"passage {i}"}),
            score=1.0 - i / 100,
        )
        for i, t in enumerate(texts)
    ]


def test_llamaindex_query_engine_keeps_top_n_scored_as_flagreranker(reranker, oracle, passages):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.no_text import NoText
    from llama_index.core.retrievers import BaseRetriever

    from rerank_ray.llamaindex import RerankRayPostprocessor

    query, texts = passages
    nodes = llama_nodes(texts)
    before = copy.deepcopy(nodes)

    class ListRetriever(BaseRetriever):
        def _retrieve(self, query_bundle):
            return nodes

    engine = RetrieverQueryEngine(
        ListRetriever(),
        response_synthesizer=NoText(llm=MockLLM()),  # no answer text: only the source nodes
        node_postprocessors=[RerankRayPostprocessor(reranker, top_n=3)],
    )
    found = engine.query(query).source_nodes

    # LlamaIndex scores a node's text with its embed-mode metadata, as SentenceTransformerRerank
    embedded = [f"title: passage {i}\n\n{t}" for i, t in enumerate(texts)]
    expected = oracle([(query, t) for t in embedded])
    order = best_first(expected, 3)
    assert [n.node_id for n in found] == [f"node-{i}" for i in order]
    assert [n.score for n in found] == pytest.approx([expected[i] for i in order], abs=1e-6)
    assert all(n.node is nodes[i].node for n, i in zip(found, order))
    assert [(n.score, n.node.metadata) for n in nodes] == [
        (n.score, n.node.metadata) for n in before
    ]  # the inputs' scores and metadata are unchanged


def test_llamaindex_matches_sentence_transformer_rerank(reranker, passages):
    from llama_index.core.postprocessor import SentenceTransformerRerank

    from rerank_ray.llamaindex import RerankRayPostprocessor

    query, texts = passages
    theirs = SentenceTransformerRerank(top_n=4, model=reranker.path, device="cpu")
    expected = theirs.postprocess_nodes(llama_nodes(texts), query_str=query)
    ours = RerankRayPostprocessor(reranker, top_n=4).postprocess_nodes(
        llama_nodes(texts), query_str=query
    )
    assert [n.node_id for n in ours] == [n.node_id for n in expected]
    assert [n.score for n in ours] == pytest.approx([float(n.score) for n in expected], abs=1e-5)


def test_llamaindex_keep_retrieval_score_top_n_and_errors(reranker, passages):
    from llama_index.core.schema import QueryBundle

    from rerank_ray.llamaindex import RerankRayPostprocessor

    query, texts = passages
    nodes = llama_nodes(texts[:4])
    kept = RerankRayPostprocessor(reranker, top_n=None, keep_retrieval_score=True)
    found = kept.postprocess_nodes(nodes, QueryBundle(query))
    assert sorted(n.node_id for n in found) == [f"node-{i}" for i in range(4)]
    assert [n.score for n in found] == sorted((n.score for n in found), reverse=True)
    for result in found:
        incoming = next(n for n in nodes if n.node_id == result.node_id)
        assert result.node.metadata == {**incoming.node.metadata, "retrieval_score": incoming.score}
        assert "retrieval_score" not in incoming.node.metadata
    assert len(RerankRayPostprocessor(reranker).postprocess_nodes(nodes, query_str=query)) == 2
    assert RerankRayPostprocessor(reranker).postprocess_nodes([], query_str=query) == []
    with pytest.raises(ValueError, match="query bundle"):
        RerankRayPostprocessor(reranker).postprocess_nodes(nodes)
