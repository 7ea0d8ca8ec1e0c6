"""Bad models and bad supplied vectors are refused in one line before Ray starts or any stage
runs: the run directory holds no stage output afterwards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.cli import main


@pytest.fixture
def tsv(tmp_path):
    """A three-passage, two-query TSV layout."""
    (tmp_path / "collection.tsv").write_text("1\tred apples\n2\tgreen pears\n3\tblue sky\n")
    (tmp_path / "queries.tsv").write_text("10\tapples\n11\tthe sky\n")
    (tmp_path / "qrels.tsv").write_text("10\t0\t1\t1\n11\t0\t3\t1\n")
    return tmp_path


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if the pipeline tries to start or join Ray."""

    def refuse(address):
        raise AssertionError("Ray was started before the bad input was refused")

    monkeypatch.setattr("rerank_ray.pipeline.connect_ray", refuse)


def run(tsv, *options):
    return main(
        [
            "run",
            "--corpus", str(tsv / "collection.tsv"),
            "--queries", str(tsv / "queries.tsv"),
            "--qrels", str(tsv / "qrels.tsv"),
            "--out", str(tsv / "run"),
            "--quiet",
            *options,
        ]
    )  # fmt: skip


def refused_before_any_stage(tsv, capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("rerank-ray: error: ")
    manifest = tsv / "run" / "manifest.json"
    assert not manifest.exists() or json.loads(manifest.read_text()).get("stages") == {}
    assert not (tsv / "run" / "data").exists() and not (tsv / "run" / "embeddings").exists()
    return error


def test_an_unknown_reranker_is_refused_before_anything_runs(tsv, no_ray, capsys):
    assert run(tsv, "--embedder", "minilm", "--reranker", "no-such-org/no-such-reranker") == 2
    error = refused_before_any_stage(tsv, capsys)
    assert "no-such-org/no-such-reranker: cannot fetch the model" in error


def test_metrics_all_deeper_than_top_k_are_refused_before_anything_runs(tsv, no_ray, capsys):
    options = ("--retriever", "bm25", "--reranker", "none", "--top-k", "2")
    assert run(tsv, *options, "--metrics", "R@1000 nDCG@10") == 2
    assert refused_before_any_stage(tsv, capsys) == (
        "rerank-ray: error: no requested metric can be reported at depth 2: recall@1000 needs"
        " 1000, ndcg@10 needs 10 (the rankings hold the top 2 passages per query)"
    )


def test_a_model_folder_without_a_tokenizer_is_refused(tsv, no_ray, capsys, minilm_path):
    model = tsv / "model"
    shutil.copytree(minilm_path, model)
    for name in ("tokenizer.json", "vocab.txt"):
        (model / name).unlink()
    assert run(tsv, "--embedder", str(model), "--reranker", "none") == 2
    assert f"{model}: no tokenizer in the model directory" in refused_before_any_stage(tsv, capsys)


def test_a_reranker_folder_without_config_is_refused(tsv, no_ray, capsys, minilm_path):
    model = tsv / "reranker"
    shutil.copytree(minilm_path, model)
    (model / "config.json").unlink()
    assert run(tsv, "--embedder", "minilm", "--reranker", str(model)) == 2
    assert f"{model}: no config.json" in refused_before_any_stage(tsv, capsys)


def test_supplied_embeddings_that_are_not_parquet_are_refused(tsv, no_ray, capsys):
    supplied = tsv / "vectors.parquet"
    supplied.write_text("pid,embedding\n1,0.5\n")
    assert run(tsv, "--embedder", "minilm", "--reranker", "none",
               "--corpus-embeddings", str(supplied)) == 2  # fmt: skip
    assert f"{supplied}: not a readable Parquet file" in refused_before_any_stage(tsv, capsys)


def _vectors(path, id_column, ids, dimension):
    values = np.random.default_rng(0).standard_normal((len(ids), dimension), dtype=np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), dimension)
    pq.write_table(pa.table({id_column: ids, "embedding": embedding}), path)


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-size-list", "list"])
def test_supplied_corpus_vectors_of_another_dimension_than_the_embedder(tsv, no_ray, capsys, fixed):
    supplied = tsv / "corpus.parquet"
    _vectors(supplied, "pid", ["1", "2", "3"], 8)
    if not fixed:
        table = pq.read_table(supplied)
        lists = pa.array(table["embedding"].to_pylist(), pa.list_(pa.float32()))
        pq.write_table(table.set_column(1, "embedding", lists), supplied)
    assert run(tsv, "--embedder", "minilm", "--reranker", "none",
               "--corpus-embeddings", str(supplied)) == 2  # fmt: skip
    error = refused_before_any_stage(tsv, capsys)
    assert error.endswith(
        f"{supplied}: 8-dimensional embeddings, but the query vectors of the embedder minilm"
        " have 384 dimensions"
    )


def test_supplied_corpus_and_query_vectors_of_two_dimensions(tsv, no_ray, capsys):
    corpus, queries = tsv / "corpus.parquet", tsv / "queries.parquet"
    _vectors(corpus, "pid", ["1", "2", "3"], 8)
    _vectors(queries, "qid", ["10", "11"], 6)
    assert run(tsv, "--embedder", "minilm", "--reranker", "none",
               "--corpus-embeddings", str(corpus), "--query-embeddings", str(queries)) == 2  # fmt: skip
    error = refused_before_any_stage(tsv, capsys)
    assert error.endswith(f"{corpus}: 8-dimensional embeddings, but the query embeddings in"
                          f" {queries} have 6 dimensions")  # fmt: skip


def test_supplied_vectors_missing_their_id_column(tsv, no_ray, capsys):
    supplied = tsv / "corpus.parquet"
    _vectors(supplied, "id", ["1", "2", "3"], 384)
    assert run(tsv, "--embedder", "minilm", "--reranker", "none",
               "--corpus-embeddings", str(supplied)) == 2  # fmt: skip
    assert f"{supplied}: missing column 'pid'" in refused_before_any_stage(tsv, capsys)


def test_a_cluster_address_where_nothing_listens_is_refused_in_one_line(tsv, capsys, monkeypatch):
    """Ray itself retries a dead GCS address for many minutes; the run refuses it at once."""
    import socket
    import time

    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a new CLI process
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    code = run(tsv, "--embedder", "minilm", "--reranker", "none", "--address", f"127.0.0.1:{port}")
    assert code == 2 and time.monotonic() - started < 30
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert error.startswith(
        f"rerank-ray: error: cannot connect to the Ray cluster at 127.0.0.1:{port}"
    )
