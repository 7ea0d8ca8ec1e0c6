"""Model loading and batch encoding: equal to FlagModel.encode on the same texts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerank_ray.errors import ConfigError
from rerank_ray.models import (
    Embedder,
    EmbedderOptions,
    default_max_length,
    default_pooling,
    length_batches,
    resolve_model,
    weights_fingerprint,
)


def test_model_defaults_come_from_the_sentence_transformers_config(minilm_path, tmp_path):
    assert default_pooling(minilm_path) == "mean"
    assert default_max_length(minilm_path) == 256
    assert default_pooling(str(tmp_path)) == "cls"  # no 1_Pooling: BGE's CLS
    assert default_max_length(str(tmp_path)) == 512


def test_resolve_alias_and_fingerprint(minilm_path, tmp_path):
    resolved = resolve_model("minilm")
    assert resolved.path == minilm_path
    assert resolved.fingerprint == weights_fingerprint(minilm_path)
    assert resolved.fingerprint.startswith("sha256:") and len(resolved.fingerprint) == 71
    with pytest.raises(ConfigError, match="no weights"):
        weights_fingerprint(str(tmp_path))
    with pytest.raises(ConfigError, match="not a model directory"):
        resolve_model(str(tmp_path / "missing-dir"))


def test_length_batches_respect_rows_and_tokens():
    lengths = [10, 200, 30, 200, 5, 50]
    batches = length_batches(lengths, batch_size=3, max_tokens=400)
    assert [b.tolist() for b in batches] == [[1, 3], [5, 2, 0], [4]]
    assert sorted(np.concatenate(batches).tolist()) == list(range(6))
    assert [b.tolist() for b in length_batches([1000], 8, 10)] == [[0]]  # never empty


@pytest.fixture(scope="module")
def embedder():
    return Embedder(
        "minilm", EmbedderOptions(batch_size=16, max_tokens_per_batch=2048), device="cpu"
    )


def test_encode_equals_flagmodel_encode(embedder, msmarco):
    with open(msmarco / "dev.jsonl") as handle:
        rows = [json.loads(next(handle)) for _ in range(60)]
    passages = [r["positive"][0] for r in rows]
    passages.append(" ".join(passages[:8]))  # longer than 256 tokens: truncated the same way
    queries = [r["query"] for r in rows]
    ours = embedder.encode_corpus(passages)
    bare = embedder.flag_model.encode_corpus(passages, batch_size=64, convert_to_numpy=True)
    assert ours.dtype == np.float32 and ours.shape == (61, 384)
    assert np.min(np.sum(ours * bare, axis=1)) > 0.9999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    ours_q = embedder.encode_queries(queries)
    bare_q = embedder.flag_model.encode_queries(queries, batch_size=64, convert_to_numpy=True)
    assert np.min(np.sum(ours_q * bare_q, axis=1)) > 0.9999
    assert embedder.stats.truncated >= 1
    assert embedder.encode_corpus([]).shape == (0, 384)


def test_query_instruction_is_prepended(minilm_path):
    instruction = "Represent this sentence for searching relevant passages: "
    with_instruction = Embedder(
        "minilm", EmbedderOptions(query_instruction=instruction), device="cpu"
    )
    plain = with_instruction.encode_corpus([instruction + "what is ray"])
    assert np.allclose(with_instruction.encode_queries(["what is ray"]), plain, atol=1e-6)
    bare = with_instruction.flag_model.encode_queries(["what is ray"], convert_to_numpy=True)
    assert float(np.sum(plain * bare)) > 0.9999
