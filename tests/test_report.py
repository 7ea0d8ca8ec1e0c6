"""The report says what its ``retrieval`` row ranked: two runs whose retrieval differs never
have reports that differ only in their numbers."""

from __future__ import annotations

from rerank_ray.report import render_report, retrieval_description

BM25 = {"k1": 1.2, "b": 0.75, "rrf_k": 30}
EMBEDDER = {
    "name": "minilm",
    "path": "/models/minilm",
    "fingerprint": "sha256:" + "0" * 64,
    "options": {
        "pooling": "mean", "query_max_length": 32, "passage_max_length": 128,
        "query_instruction": "query: ", "normalize": True, "storage": "float16",
    },
}  # fmt: skip


def _manifest(retriever: str, **config) -> dict:
    return {
        "config": {"retriever": retriever, "top_k": 50, "bm25": BM25, "embedder": "minilm",
                   "data": {}, **config},
        "models": {"embedder": EMBEDDER if retriever != "bm25" else None, "rerankers": {}},
        "stages": {},
    }  # fmt: skip


DENSE = (
    "the exact inner-product top-k of minilm's vectors (pooling mean, max length 32 for queries"
    " and 128 for passages, query instruction 'query: ', normalized True, stored as float16)"
)


def test_each_retriever_is_described_with_its_options():
    assert retrieval_description(_manifest("bm25")) == (
        "Retrieval: BM25 (bm25s; k1 1.2, b 0.75); the top 50 passages per query."
    )
    assert retrieval_description(_manifest("dense")) == (
        f"Retrieval: {DENSE}; the top 50 passages per query."
    )
    assert retrieval_description(_manifest("hybrid")) == (
        f"Retrieval: reciprocal-rank fusion (k 30) of BM25 (bm25s; k1 1.2, b 0.75) and {DENSE};"
        " the top 50 passages per query."
    )
    supplied = _manifest("dense", query_embeddings="/vectors/q.parquet")
    assert retrieval_description(supplied) == (
        f"Retrieval: {DENSE}, query vectors supplied from `/vectors/q.parquet`; the top 50"
        " passages per query."
    )


def test_the_report_carries_the_description():
    metrics = {"retrieval": {"recall@10": 0.5}}
    hybrid = render_report(metrics, _manifest("hybrid"))
    dense = render_report(metrics, _manifest("dense"))
    assert retrieval_description(_manifest("hybrid")) in hybrid
    assert hybrid != dense
