"""The GPU benchmark's bare transformers loops (bench/bare_models.py) equal FlagEmbedding's
FlagModel and FlagReranker, and compute what the pipeline's actors compute on the benchmark's
models: its actor-over-bare ratios compare the same work."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bare_models import BareCrossEncoder, BareEncoder  # noqa: E402

TEXTS = [
    "what is a panda?",
    "The giant panda is a bear species endemic to China, known for its black and white coat.",
    "hi",
    "Cross-encoders read the query and the passage together and output one relevance score; "
    "bi-encoders embed each text alone, so passages can be embedded once and searched later.",
    "a b c d e f g",
]
PAIRS = [(TEXTS[0], TEXTS[1]), (TEXTS[0], TEXTS[2]), ("how do rerankers work", TEXTS[3])]
PAIRS += [("panda", text) for text in TEXTS]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bare_encoder_equals_flag_model(minilm_path, pooling):
    from FlagEmbedding import FlagModel

    flag = FlagModel(
        minilm_path, pooling_method=pooling, normalize_embeddings=True, use_fp16=False,
        devices=["cpu"], batch_size=2, passage_max_length=512,
    )  # fmt: skip
    expected = flag.encode_corpus(TEXTS, batch_size=2)
    vectors = BareEncoder(minilm_path, pooling=pooling).encode(TEXTS, batch_size=2)
    assert vectors.shape == expected.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_bare_cross_encoder_equals_flag_reranker(tmp_path):
    from FlagEmbedding import FlagReranker

    from rerank_ray.cross_encoder import build_smoke_reranker

    path = build_smoke_reranker(str(tmp_path))
    flag = FlagReranker(path, use_fp16=False, devices=["cpu"], batch_size=3)
    expected = np.asarray(flag.compute_score(PAIRS), dtype=np.float32)
    scores = BareCrossEncoder(path).score(PAIRS, batch_size=3)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.ptp(scores) > 1e-3  # the pairs score differently: the comparison has teeth


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    """The GPU benchmark's models at ``--size tiny`` (random XLM-R, its own tokenizer)."""
    from gpu import build_models

    return build_models("tiny", str(tmp_path_factory.mktemp("gpu-models")))


def test_actors_compute_what_the_bare_loops_compute(tiny_models):
    import pyarrow as pa
    from gpu import synthetic_passages

    from rerank_ray.embed import EmbedActor
    from rerank_ray.embedder import EmbedderOptions
    from rerank_ray.rerank import RerankActor, RerankOptions

    embedder_path, reranker_path = tiny_models
    texts = synthetic_passages(12)
    options = EmbedderOptions(batch_size=4, max_tokens_per_batch=4 * 128)
    actor = EmbedActor(embedder_path, options, "corpus")  # no counters: Ray is not involved
    table = actor(pa.table({"pid": [str(i) for i in range(len(texts))], "text": texts}))
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    bare = BareEncoder(embedder_path).encode(texts, batch_size=4)
    np.testing.assert_allclose(vectors, bare, atol=1e-5)
    assert actor.embedder.stats.tokens == sum(len(t.split()) + 2 for t in texts)  # a word a token

    pairs = [(texts[i][:60], texts[(i * 7 + 1) % len(texts)]) for i in range(len(texts))]
    rerank = RerankActor(RerankOptions(models=reranker_path, batch_size=4))
    scored = rerank(
        pa.table(
            {
                "qid": [str(i) for i in range(len(pairs))],
                "pid": [str(i) for i in range(len(pairs))],
                "retrieval_rank": list(range(1, len(pairs) + 1)),
                "query": [q for q, _ in pairs],
                "text": [p for _, p in pairs],
            }
        )  # fmt: skip
    )
    bare_scores = BareCrossEncoder(reranker_path).score(pairs, batch_size=4)
    np.testing.assert_allclose(scored.column("score").to_numpy(), bare_scores, atol=1e-5)
