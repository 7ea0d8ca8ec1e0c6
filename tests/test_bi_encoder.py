"""``--reranker bi:MODEL``: pairs scored by an embedding model, against FlagModel built here,
and end to end, where rescoring with the retrieval's own model must reproduce its scores."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from rerank_ray.bi_encoder import BiEncoderScorer, resolve_reranker
from rerank_ray.models import resolve_model

PAIRS = [
    ("what is a panda?", "The giant panda is a bear native to China."),
    ("what is a panda?", "Pandas is a Python library for data frames."),
    ("how tall is everest", "Mount Everest is 8,849 metres high."),
    ("what is a panda?", "A red panda is not a bear."),
]


def test_scores_are_inner_products_of_flagmodel_embeddings(minilm_path):
    from FlagEmbedding import FlagModel

    oracle = FlagModel(  # MiniLM's own options, written out: mean pooling, 256 tokens, normalized
        minilm_path, pooling_method="mean", normalize_embeddings=True, use_fp16=False,
        devices=["cpu"], query_max_length=256, passage_max_length=256,
    )  # fmt: skip
    queries = oracle.encode_queries([q for q, _ in PAIRS])
    passages = oracle.encode_corpus([p for _, p in PAIRS])
    expected = np.sum(queries * passages, axis=1)
    scorer = BiEncoderScorer("bi:minilm", device="cpu", batch_size=2)
    scores = scorer.score(PAIRS)
    assert scores.dtype == np.float32 and scores == pytest.approx(expected, abs=1e-6)
    assert scores[0] > scores[1]  # the bear, not the library
    assert scorer.stats.rows == len(PAIRS) and scorer.score([]).shape == (0,)


def test_a_bi_reranker_is_keyed_by_its_embedders_weights():
    bi, embedder = resolve_reranker("bi:minilm"), resolve_model("minilm")
    assert bi.name == "bi:minilm" and (bi.path, bi.fingerprint) == (
        embedder.path,
        embedder.fingerprint,
    )


@pytest.mark.slow
def test_rescoring_with_the_retrievals_own_model_reproduces_its_scores(msmarco, tmp_path):
    from rerank_ray.cli import main

    out = tmp_path / "run"
    code = main(
        ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "30", "--num-queries",
         "4", "--embedder", "minilm", "--reranker", "bi:minilm", "--top-k", "8", "--out", str(out),
         "--no-cache", "-q"]
    )  # fmt: skip
    assert code == 0
    retrieval = pq.read_table(out / "retrieval.parquet").to_pylist()
    reranked = pq.read_table(out / "rerank" / "bi_minilm.parquet").to_pylist()
    scores = {(r["qid"], r["pid"]): r["score"] for r in retrieval}
    assert len(reranked) == len(retrieval) == 4 * 8
    for row in reranked:
        assert row["score"] == pytest.approx(scores[(row["qid"], row["pid"])], abs=1e-5)
