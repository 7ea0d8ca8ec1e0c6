"""Exact top-k: the shortlisted block search, its error bound, ties by pid, and the Ray stage
against float64 brute force."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.embed import to_fixed_size_list
from rerank_ray.search import BlockSearch, exact_search, merge_topk


def brute_force(queries, corpus, pids, k):
    """numpy in float64: all scores, then sort each row by (-score, pid)."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    pids = np.asarray(pids)
    out_ids, out_scores = [], []
    for row in scores:
        order = np.lexsort((pids, -row))[:k]
        out_ids.append(pids[order].tolist())
        out_scores.append(row[order].tolist())
    return out_ids, out_scores


def blockwise(queries, corpus, pids, k, block, **options):
    search = BlockSearch(queries, k, **options)
    for start in range(0, len(corpus), block):
        search.add(corpus[start : start + block], pids[start : start + block])
    return search.result()


def test_ties_go_by_pid():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    corpus = np.array([[1, 2], [3, 2], [3, 2], [3, 2], [0, 2]], dtype=np.float32)
    top = blockwise(queries, corpus, np.array(["e", "d", "b", "c", "a"]), k=2, block=2)
    assert top.ids.tolist() == [["b", "c"], ["a", "b"]]
    assert top.scores.tolist() == [[3.0, 3.0], [2.0, 2.0]]


def test_fewer_passages_than_k_and_merge():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    first = blockwise(query, np.array([[0.1, 0], [0.9, 0]], np.float32), np.array(["x", "y"]), 3, 1)
    assert first.ids.tolist() == [["y", "x"]]
    second = blockwise(
        query, np.array([[0.5, 0], [0.9, 0]], np.float32), np.array(["a", "b"]), 3, 2
    )
    assert merge_topk(first, second, k=3).ids.tolist() == [["b", "y", "a"]]


@pytest.mark.parametrize("shortlist", [True, False])
@pytest.mark.parametrize("kind", ["integers", "floats", "float16", "near-duplicates"])
def test_blockwise_equals_float64_brute_force(kind, shortlist):
    rng = np.random.default_rng(3)
    if kind == "integers":  # every product exact: ties are real and must go by pid
        corpus = rng.integers(-2, 3, size=(700, 8)).astype(np.float32)
        queries = rng.integers(-2, 3, size=(30, 8)).astype(np.float32)
    else:
        corpus = rng.standard_normal((700, 32)).astype(np.float32) * rng.uniform(0.1, 10, (700, 1))
        queries = rng.standard_normal((30, 32)).astype(np.float32)
    if kind == "float16":
        corpus = corpus.astype(np.float16)
    if kind == "near-duplicates":
        # Passages that differ below bfloat16's resolution: the shortlist cannot tell them
        # apart, so only its error bound keeps the right ones.
        base = rng.standard_normal(32).astype(np.float32)
        corpus = (base + 1e-4 * rng.standard_normal((700, 32))).astype(np.float32)
    pids = np.array([f"p{i:04d}" for i in rng.permutation(700)])
    ids, scores = brute_force(queries, corpus, pids, 20)
    for block in (7, 64, 150, 700):
        top = blockwise(queries, corpus, pids, 20, block, shortlist=shortlist)
        assert top.ids.tolist() == ids
        np.testing.assert_allclose(top.scores, scores, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [8, 384, 1024])
def test_shortlist_error_bound_holds(dim):
    """Every bfloat16 score is within the stated bound of the float64 one, and the bound is tight
    enough to be useful (within 20x of the largest error seen)."""
    import torch

    rng = np.random.default_rng(dim)
    queries = rng.standard_normal((50, dim)).astype(np.float32) * rng.uniform(0.01, 100, (50, 1))
    corpus = rng.standard_normal((2000, dim)).astype(np.float32) * rng.uniform(0.01, 100, (2000, 1))
    search = BlockSearch(queries, k=10)
    approx, error, relative = search._approximate(torch.from_numpy(corpus))
    exact = queries.astype(np.float64) @ corpus.astype(np.float64).T
    approx = approx.double().numpy()
    allowed = error.numpy()[:, None] + relative * np.abs(approx)
    assert np.all(np.abs(exact - approx) <= allowed)
    assert np.abs(exact - approx).max() > allowed.max() / 20


def _write_embedding_files(directory, id_column, ids, vectors, parts):
    directory.mkdir(parents=True)
    for index, chunk in enumerate(np.array_split(np.arange(len(ids)), parts)):
        pq.write_table(
            pa.table(
                {
                    id_column: [ids[i] for i in chunk],
                    "embedding": to_fixed_size_list(vectors[chunk]),
                }
            ),
            directory / f"part-{index}.parquet",
        )


def test_ray_stage_equals_brute_force(ray_session, tmp_path):
    rng = np.random.default_rng(7)
    corpus = rng.integers(-3, 4, size=(3000, 16)).astype(np.float32)
    queries = rng.integers(-3, 4, size=(40, 16)).astype(np.float32)
    pids = [f"d{i}" for i in range(3000)]
    qids = [f"q{i:02d}" for i in range(40)]
    _write_embedding_files(tmp_path / "corpus", "pid", pids, corpus, parts=5)
    _write_embedding_files(tmp_path / "queries", "qid", qids, queries, parts=2)
    out = tmp_path / "retrieval.parquet"
    stats = exact_search(str(tmp_path / "corpus"), str(tmp_path / "queries"), str(out), k=50)
    table = pq.read_table(out)
    assert stats.rows == table.num_rows == 40 * 50
    assert stats.resources["tasks"] == 5 and stats.resources["devices"] == ["cpu"]
    assert table.schema.names == ["qid", "pid", "rank", "score"]
    ids, scores = brute_force(queries, corpus, pids, 50)
    for q, qid in enumerate(qids):
        rows = table.filter(pa.compute.equal(table["qid"], qid)).sort_by("rank").to_pydict()
        assert rows["rank"] == list(range(1, 51))
        assert rows["pid"] == ids[q]
        assert rows["score"] == pytest.approx(scores[q])


def test_k_larger_than_corpus(ray_session, tmp_path):
    rng = np.random.default_rng(1)
    _write_embedding_files(
        tmp_path / "corpus", "pid", ["a", "b", "c"], rng.random((3, 4), dtype=np.float32), 2
    )
    _write_embedding_files(
        tmp_path / "queries", "qid", ["q"], rng.random((1, 4), dtype=np.float32), 1
    )
    exact_search(
        str(tmp_path / "corpus"), str(tmp_path / "queries"), str(tmp_path / "r.parquet"), k=10
    )
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 3
