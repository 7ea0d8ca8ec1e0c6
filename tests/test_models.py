"""Model loading and batch encoding: equal to a FlagModel that the test builds itself, with the
pooling, max lengths and instruction it expects written out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerank_ray.embedder import Embedder, EmbedderOptions, length_batches
from rerank_ray.errors import ConfigError
from rerank_ray.models import (
    default_max_length,
    default_pooling,
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


#: BGE v1.5's query instruction: a real one, long enough to matter under a short max length.
INSTRUCTION = "Represent this sentence for searching relevant passages: "


@pytest.fixture(scope="module")
def msmarco_texts(msmarco) -> tuple[list[str], list[str]]:
    """Real MS MARCO queries and positive passages, plus all the passages in one, longer
    than 512 tokens."""
    with open(msmarco / "dev.jsonl") as handle:
        rows = [json.loads(next(handle)) for _ in range(8)]
    passages = [r["positive"][0] for r in rows]
    passages.append(" ".join(passages))
    return [r["query"] for r in rows], passages


def flag_oracle(
    path: str,
    pooling: str,
    query_max_length: int,
    passage_max_length: int,
    instruction: str | None = None,
):
    """A FlagModel built here with every option that decides a vector written out: the
    reference the project's Embedder must equal (float32 on the CPU). It encodes one text per
    forward pass, so no padding: the reference does not depend on how texts are batched."""
    from FlagEmbedding import FlagModel

    return FlagModel(
        path,
        pooling_method=pooling,
        normalize_embeddings=True,
        query_max_length=query_max_length,
        passage_max_length=passage_max_length,
        query_instruction_for_retrieval=instruction,
        query_instruction_format="{}{}",
        use_fp16=False,
        devices=["cpu"],
        batch_size=1,
    )


def assert_same_vectors(ours: np.ndarray, expected: np.ndarray) -> None:
    """Equal to float32 rounding: max |difference| and max 1 - cos both under 1e-6."""
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    assert np.max(np.abs(ours - expected)) < 1e-6
    cosine = np.sum(ours * expected, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert np.max(1 - cosine) < 1e-6


def token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens of each text with special tokens, untruncated."""
    return [len(ids) for ids in tokenizer(texts, verbose=False)["input_ids"]]


def test_minilm_embeds_as_a_mean_pooled_flagmodel_at_256_tokens(minilm_path, msmarco_texts):
    queries, passages = msmarco_texts
    embedder = Embedder(
        "minilm",
        EmbedderOptions(query_instruction=INSTRUCTION, batch_size=16, max_tokens_per_batch=2048),
        device="cpu",
    )
    oracle = flag_oracle(minilm_path, "mean", 256, 256, INSTRUCTION)
    assert max(token_counts(oracle.tokenizer, passages)) > 256  # the cut at 256 matters
    assert_same_vectors(embedder.encode_corpus(passages), oracle.encode_corpus(passages))
    assert_same_vectors(embedder.encode_queries(queries), oracle.encode_queries(queries))
    assert embedder.stats.truncated == sum(
        n >= 256 for n in token_counts(oracle.tokenizer, passages)
    )
    assert embedder.encode_corpus([]).shape == (0, 384)


def test_short_max_lengths_cut_queries_and_passages_as_flagmodel(minilm_path, msmarco_texts):
    queries, passages = msmarco_texts
    options = EmbedderOptions(
        query_instruction=INSTRUCTION, query_max_length=14, passage_max_length=32, batch_size=8
    )
    embedder = Embedder("minilm", options, device="cpu")
    oracle = flag_oracle(minilm_path, "mean", 14, 32, INSTRUCTION)
    instructed = [INSTRUCTION + q for q in queries]
    assert sum(n > 14 for n in token_counts(oracle.tokenizer, instructed)) > len(queries) // 2
    assert all(n > 32 for n in token_counts(oracle.tokenizer, passages))
    assert_same_vectors(embedder.encode_corpus(passages), oracle.encode_corpus(passages))
    assert_same_vectors(embedder.encode_queries(queries), oracle.encode_queries(queries))


@pytest.fixture(scope="module")
def tiny_bert_path(tmp_path_factory, minilm_path) -> str:
    """A 2-layer BERT with seeded random weights and MiniLM's tokenizer, saved as safetensors
    without a ``1_Pooling`` folder or ``sentence_bert_config.json``: a BGE-style model, whose
    pooling is CLS and whose max length is 512."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=tokenizer.vocab_size,
    )
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        model = BertModel(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    assert not (path / "1_Pooling").exists() and not (path / "sentence_bert_config.json").exists()
    return str(path)


def test_a_model_without_pooling_config_embeds_as_a_cls_flagmodel(tiny_bert_path, msmarco_texts):
    queries, passages = msmarco_texts
    assert default_pooling(tiny_bert_path) == "cls"
    embedder = Embedder(tiny_bert_path, device="cpu")
    oracle = flag_oracle(tiny_bert_path, "cls", 512, 512)
    assert max(token_counts(oracle.tokenizer, passages)) > 512  # the cut at 512 matters
    assert_same_vectors(embedder.encode_corpus(passages), oracle.encode_corpus(passages))
    assert_same_vectors(embedder.encode_queries(queries), oracle.encode_queries(queries))
