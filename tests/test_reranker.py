"""The reranking API and the cross-encoder scoring: equal to FlagReranker.compute_score."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pytest

from rerank_ray import Reranker
from rerank_ray.cross_encoder import CrossEncoder, build_smoke_reranker, sigmoid
from rerank_ray.rerank import rank_scored_pairs


@dataclass
class Document:
    """The shape of LangChain's Document, without importing LangChain."""

    page_content: str
    metadata: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def reranker():
    return Reranker("minilm-smoke", device="cpu", batch_size=8, max_length=64)


@pytest.fixture(scope="module")
def msmarco_pairs(msmarco):
    with open(msmarco / "dev.jsonl") as handle:
        rows = [json.loads(next(handle)) for _ in range(30)]
    return [(r["query"], rows[(i * 7) % 30]["positive"][0]) for i, r in enumerate(rows)]


def test_cross_encoder_scores_equal_a_flagreranker_built_here(reranker, msmarco_pairs):
    from FlagEmbedding import FlagReranker

    passages = [p for _, p in msmarco_pairs]
    pairs = (
        msmarco_pairs[:12]
        + [
            (msmarco_pairs[0][0], " ".join(passages)),  # a real passage cut to fit 64 tokens
            (" ".join(passages[:3]), passages[3]),  # a real text as the query: cut at 48 tokens
            ("long query " * 80, "long passage " * 400),  # both sides cut
        ]
    )
    path = build_smoke_reranker()
    encoder = CrossEncoder("minilm-smoke", device="cpu", batch_size=8, max_length=64)
    assert encoder.path == path
    # Pairs cut at 64 tokens, queries at 48 (3/4 of it); one pair per pass, so no padding.
    oracle = FlagReranker(
        path, use_fp16=False, devices=["cpu"], batch_size=1, max_length=64, query_max_length=48
    )
    query_lengths = [
        len(ids)
        for ids in oracle.tokenizer([q for q, _ in pairs], add_special_tokens=False)["input_ids"]
    ]
    assert sum(n > 48 for n in query_lengths) == 2  # the query cut matters
    expected = np.array(oracle.compute_score(pairs))
    ours = encoder.score(pairs)
    assert ours.dtype == np.float32 and ours.shape == (len(pairs),)
    assert np.max(np.abs(ours - expected)) < 1e-5
    assert np.array_equal(reranker.score(pairs), ours)  # the public API scores the same
    normalized = oracle.compute_score(pairs[-3:], normalize=True)
    assert np.max(np.abs(sigmoid(ours[-3:]) - np.array(normalized))) < 1e-6


def test_rerank_sorts_and_reports_sigmoid(reranker, msmarco_pairs):
    query = msmarco_pairs[0][0]
    documents = [p for _, p in msmarco_pairs[:8]]
    results = reranker.rerank(query, documents)
    scores = reranker.score([(query, d) for d in documents])
    assert [r.index for r in results] == sorted(range(8), key=lambda i: -scores[i])
    for result in results:
        assert result.document is documents[result.index]
        assert result.score == pytest.approx(scores[result.index])
        assert result.relevance_score == pytest.approx(1 / (1 + math.exp(-result.score)))
        assert 0 < result.relevance_score < 1


def test_top_n_ties_and_edge_cases(reranker):
    documents = ["same text", "another text", "same text"]
    results = reranker.rerank("q", documents, top_n=10)  # more than given: all
    assert len(results) == 3
    positions = [r.index for r in results]
    assert positions.index(0) < positions.index(2)  # equal scores keep input order
    assert [r.index for r in reranker.rerank("q", documents, top_n=1)] == [positions[0]]
    assert reranker.rerank("q", []) == []
    assert reranker.rerank("q", documents, top_n=0) == []
    with pytest.raises(TypeError, match="page_content"):
        reranker.rerank("q", [42])


def test_documents_with_page_content_are_scored_and_left_unchanged(reranker):
    documents = [Document("pandas are bears", {"source": "a"}), Document("hello world")]
    before = copy.deepcopy(documents)
    results = reranker.rerank("what is a panda?", documents, top_n=1)
    assert len(results) == 1 and results[0].document is documents[results[0].index]
    assert documents == before  # no relevance_score (or anything else) written into metadata
    strings = reranker.rerank("what is a panda?", [d.page_content for d in documents])
    assert strings[0].index == results[0].index
    assert strings[0].score == pytest.approx(results[0].score, abs=1e-5)


def test_a_document_longer_than_max_length_is_truncated(reranker):
    long_document = "ray data streams blocks " * 200
    longer = long_document + "completely different ending " * 50
    first, second = reranker.score([("q", long_document), ("q", longer)])
    assert first == pytest.approx(second, abs=1e-5)  # only the first 64 tokens count


def test_rank_scored_pairs_orders_by_score_then_retrieval_rank():
    scored = pa.table(
        {
            "qid": ["b", "a", "a", "a", "b"],
            "pid": ["x", "p", "q", "r", "y"],
            "retrieval_rank": [1, 1, 2, 3, 2],
            "score": pa.array([0.0, 1.0, 3.0, 1.0, 2.0], pa.float32()),
        }
    )
    ranked = rank_scored_pairs(scored).to_pydict()
    assert ranked["qid"] == ["a", "a", "a", "b", "b"]
    assert ranked["pid"] == ["q", "p", "r", "y", "x"]
    assert ranked["rank"] == [1, 2, 3, 1, 2]
    assert ranked["retrieval_rank"] == [2, 1, 3, 2, 1]
    assert ranked["relevance_score"] == pytest.approx([float(sigmoid(s)) for s in [3, 1, 1, 2, 0]])
