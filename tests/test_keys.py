"""Stage keys and cache keys: every option that changes a vector, a ranking or a score changes
the key of the first stage it affects (and so of every later stage); an option that only
changes speed or placement changes none. Keys are computed as a run computes them
(:meth:`Pipeline.stage_key` on a claimed run directory), without running a stage."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.cache import embedding_key
from rerank_ray.config import ComputeConfig, RunConfig
from rerank_ray.datasets import DataConfig
from rerank_ray.embedder import EmbedderOptions
from rerank_ray.keys import vector_options
from rerank_ray.models import weights_fingerprint
from rerank_ray.pipeline import STAGES, Pipeline
from rerank_ray.rerank import RerankOptions


@pytest.fixture(scope="module")
def sources(msmarco, tmp_path_factory):
    """A small dataset file and two model folders: a copy of MiniLM (same files, other name)
    and one whose weights differ in one byte."""
    root = tmp_path_factory.mktemp("key-sources")
    dataset = root / "dev.jsonl"
    dataset.write_bytes(b"".join((msmarco / "dev.jsonl").read_bytes().splitlines(True)[:30]))
    return root, dataset


@pytest.fixture(scope="module")
def models(minilm_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("key-models")
    copy = root / "renamed-minilm"
    shutil.copytree(minilm_path, copy)
    other = root / "other-weights"
    shutil.copytree(minilm_path, other)
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    return {"copy": str(copy), "other": str(other)}


def base_config(dataset, out) -> RunConfig:
    return RunConfig(
        out=str(out),
        data=DataConfig(dataset=str(dataset), corpus_rows=20, num_queries=5),
        embedder="minilm",
        top_k=10,
        rerank=RerankOptions(models="minilm-smoke", top_k=5, max_length=128),
    )


def keys_of(config: RunConfig) -> dict[str, str]:
    with Pipeline(config) as pipeline:
        return {stage: pipeline.stage_key(stage) for stage in STAGES}


def first_changed(before: dict, after: dict) -> str | None:
    """The first stage whose key differs; every later stage's must differ too."""
    changed = [stage for stage in STAGES if before[stage] != after[stage]]
    if not changed:
        return None
    first = STAGES.index(changed[0])
    assert changed == list(STAGES[first:]), changed
    return changed[0]


def embedding(**changes) -> EmbedderOptions:
    return EmbedderOptions(**changes)


#: (what changes, the first stage it must invalidate)
CHANGES = [
    ("corpus_rows", lambda c: dataclasses.replace(c, data=dataclasses.replace(c.data, corpus_rows=21)), "prepare"),
    ("num_queries", lambda c: dataclasses.replace(c, data=dataclasses.replace(c.data, num_queries=4)), "prepare"),
    ("pooling", lambda c: dataclasses.replace(c, embedding=embedding(pooling="cls")), "embed"),
    ("query_max_length", lambda c: dataclasses.replace(c, embedding=embedding(query_max_length=16)), "embed"),
    ("passage_max_length", lambda c: dataclasses.replace(c, embedding=embedding(passage_max_length=32)), "embed"),
    ("query_instruction", lambda c: dataclasses.replace(c, embedding=embedding(query_instruction="q: ")), "embed"),
    ("normalize", lambda c: dataclasses.replace(c, embedding=embedding(normalize=False)), "embed"),
    ("storage", lambda c: dataclasses.replace(c, embedding=embedding(storage="float16")), "embed"),
    ("top_k", lambda c: dataclasses.replace(c, top_k=11), "retrieve"),
    ("rerank model", lambda c: dataclasses.replace(c, rerank=c.rerank.only("none")), "rerank"),
    ("a second reranker", lambda c: dataclasses.replace(c, rerank=dataclasses.replace(c.rerank, models=("minilm-smoke", "bi:minilm"))), "rerank"),
    ("baseline", lambda c: dataclasses.replace(c, baseline="minilm-smoke"), "evaluate"),
    ("rerank max_length", lambda c: dataclasses.replace(c, rerank=dataclasses.replace(c.rerank, max_length=64)), "rerank"),
    ("rerank top_k", lambda c: dataclasses.replace(c, rerank=dataclasses.replace(c.rerank, top_k=4)), "rerank"),
    ("rerank depths", lambda c: dataclasses.replace(c, rerank=dataclasses.replace(c.rerank, depths=(1, 2))), "evaluate"),
    ("metrics", lambda c: dataclasses.replace(c, metrics=("p@5",)), "evaluate"),
]  # fmt: skip

#: Options that change speed or placement only: no key may change.
SPEED_ONLY = [
    ("batch_size", lambda c: dataclasses.replace(c, embedding=embedding(batch_size=8))),
    ("max_tokens_per_batch", lambda c: dataclasses.replace(c, embedding=embedding(max_tokens_per_batch=512))),
    ("reranker batch_size", lambda c: dataclasses.replace(c, rerank=dataclasses.replace(c.rerank, batch_size=4))),
    ("reranker tokens", lambda c: dataclasses.replace(c, rerank=dataclasses.replace(c.rerank, max_tokens_per_batch=999))),
    ("num_actors", lambda c: dataclasses.replace(c, compute=ComputeConfig(num_actors=3))),
    ("max_actors", lambda c: dataclasses.replace(c, compute=ComputeConfig(max_actors=5))),
    ("rows_per_call", lambda c: dataclasses.replace(c, compute=ComputeConfig(rows_per_call=7))),
    ("device", lambda c: dataclasses.replace(c, compute=ComputeConfig(device="cpu"))),
    ("address", lambda c: dataclasses.replace(c, compute=ComputeConfig(address="ray://x:1"))),
    ("cache", lambda c: dataclasses.replace(c, cache_dir="/nowhere", use_cache=False)),
]  # fmt: skip


@pytest.fixture(scope="module")
def base_keys(sources, tmp_path_factory):
    _, dataset = sources
    return keys_of(base_config(dataset, tmp_path_factory.mktemp("base") / "run"))


@pytest.mark.parametrize("name,change,stage", CHANGES, ids=[c[0] for c in CHANGES])
def test_an_option_that_changes_results_invalidates_its_stage(
    sources, base_keys, tmp_path, name, change, stage
):
    _, dataset = sources
    changed = keys_of(change(base_config(dataset, tmp_path / "run")))
    assert first_changed(base_keys, changed) == stage


@pytest.mark.parametrize("name,change", SPEED_ONLY, ids=[c[0] for c in SPEED_ONLY])
def test_an_option_that_changes_speed_only_invalidates_nothing(
    sources, base_keys, tmp_path, name, change
):
    _, dataset = sources
    assert keys_of(change(base_config(dataset, tmp_path / "run"))) == base_keys


def test_the_defaults_spelled_out_are_the_same_key(sources, base_keys, minilm_path, tmp_path):
    """MiniLM's own defaults (mean pooling, 256 tokens) given explicitly, and the model given
    by path instead of alias: the same vectors, the same keys."""
    _, dataset = sources
    config = base_config(dataset, tmp_path / "run")
    config = dataclasses.replace(
        config,
        embedder=minilm_path,
        embedding=embedding(pooling="mean", query_max_length=256, passage_max_length=256),
    )
    assert keys_of(config) == base_keys


def test_models_are_keyed_by_their_files_not_their_names(
    sources, base_keys, models, minilm_path, tmp_path
):
    _, dataset = sources
    config = base_config(dataset, tmp_path / "a")
    assert keys_of(dataclasses.replace(config, embedder=models["copy"])) == base_keys
    other = keys_of(
        dataclasses.replace(base_config(dataset, tmp_path / "b"), embedder=models["other"])
    )
    assert first_changed(base_keys, other) == "embed"
    reranker = config.rerank.only(models["other"])
    other = keys_of(dataclasses.replace(base_config(dataset, tmp_path / "c"), rerank=reranker))
    assert first_changed(base_keys, other) == "rerank"
    # the fingerprint covers the tokenizer and configs; a README is not part of the model
    assert weights_fingerprint(models["copy"]) == weights_fingerprint(minilm_path)
    (tmp_path / "m").mkdir()
    shutil.copytree(minilm_path, tmp_path / "m" / "tok")
    vocab = tmp_path / "m" / "tok" / "vocab.txt"
    vocab.write_text(vocab.read_text() + "extra-token\n")
    assert weights_fingerprint(str(tmp_path / "m" / "tok")) != weights_fingerprint(minilm_path)
    shutil.copytree(minilm_path, tmp_path / "m" / "readme")
    (tmp_path / "m" / "readme" / "README.md").write_text("other words")
    assert weights_fingerprint(str(tmp_path / "m" / "readme")) == weights_fingerprint(minilm_path)


def test_sources_and_supplied_vectors_are_keyed_by_content(sources, base_keys, tmp_path):
    root, dataset = sources
    edited = tmp_path / "dev.jsonl"
    edited.write_bytes(dataset.read_bytes())
    config = base_config(edited, tmp_path / "run")
    same = keys_of(config)
    edited.write_bytes(dataset.read_bytes().replace(b"the", b"teh", 1))
    assert first_changed(same, keys_of(config)) == "prepare"

    vectors = tmp_path / "corpus.parquet"
    values = np.ones((2, 384), dtype=np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 384)
    pq.write_table(pa.table({"pid": ["a", "b"], "embedding": column}), vectors)
    supplied = dataclasses.replace(config, corpus_embeddings=str(vectors), out=str(tmp_path / "s"))
    first = keys_of(supplied)
    assert first_changed(keys_of(config), first) == "embed"
    values[0, 0] = 2.0
    column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 384)
    pq.write_table(pa.table({"pid": ["a", "b"], "embedding": column}), vectors)
    assert first_changed(first, keys_of(supplied)) == "embed"


def test_candidates_are_keyed_by_content_and_need_no_embedder(sources, base_keys, tmp_path):
    """With candidates, the embedder is neither resolved nor part of any key; the candidates'
    content is part of the retrieve stage's."""
    _, dataset = sources
    run = tmp_path / "run.trec"
    run.write_text("0 Q0 pa 1 2.0 bm25\n0 Q0 pb 2 1.0 bm25\n")
    config = dataclasses.replace(base_config(dataset, tmp_path / "a"), candidates=str(run))
    first = keys_of(config)
    assert first_changed(base_keys, first) == "embed"
    elsewhere = keys_of(
        dataclasses.replace(
            config,
            out=str(tmp_path / "b"),
            embedder="/no/such/embedder",  # resolving it would fail
            embedding=embedding(pooling="cls"),
        )
    )
    assert elsewhere == first
    run.write_text("0 Q0 pa 1 1.0 bm25\n0 Q0 pb 2 2.0 bm25\n")
    assert first_changed(first, keys_of(config)) == "retrieve"


@pytest.mark.parametrize("role", ["corpus", "queries"])
def test_the_cache_key_changes_exactly_with_the_vector_options(minilm_path, role):
    """The cache key and the embed stage's key are built from the same vector options."""
    base = EmbedderOptions().resolved(minilm_path)
    fingerprint = weights_fingerprint(minilm_path)

    def key(options, dtype="float32", content="sha256:x", model=fingerprint):
        return embedding_key(model, vector_options(options, role), role, content, dtype)

    reference = key(base)
    for change in (
        {"pooling": "cls"},
        {"passage_max_length": 32} if role == "corpus" else {"query_max_length": 16},
        {"normalize": False},
        {"storage": "float16"},
        *([{"query_instruction": "q: "}] if role == "queries" else []),
    ):
        assert key(dataclasses.replace(base, **change)) != reference, change
    for change in (
        {"batch_size": 3},
        {"max_tokens_per_batch": 17},
        {"query_max_length": 16} if role == "corpus" else {"passage_max_length": 32},
    ):
        assert key(dataclasses.replace(base, **change)) == reference, change
    assert key(base, dtype="float16") != reference  # computed in another precision
    assert key(base, content="sha256:y") != reference
    assert key(base, model="sha256:other") != reference
