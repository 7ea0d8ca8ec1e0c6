"""Exact top-k: per-block selection, merging, ties by pid, and the Ray stage against brute force."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.embed import to_fixed_size_list
from rerank_ray.search import exact_search, merge_topk, topk_of_block


def brute_force(queries, corpus, pids, k):
    """numpy: all scores, then sort each row by (-score, pid)."""
    scores = queries @ corpus.T
    pids = np.asarray(pids)
    out_ids, out_scores = [], []
    for row in scores:
        order = np.lexsort((pids, -row))[:k]
        out_ids.append(pids[order].tolist())
        out_scores.append(row[order].tolist())
    return out_ids, out_scores


def test_topk_of_block_breaks_ties_by_pid():
    scores = np.array([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]], dtype=np.float32)
    ids = np.array(["e", "d", "b", "c", "a"])
    top = topk_of_block(scores, ids, k=2)
    assert top.ids.tolist() == [["b", "c"], ["a", "b"]]
    assert top.scores.tolist() == [[3.0, 3.0], [2.0, 2.0]]


def test_block_smaller_than_k_and_merge():
    first = topk_of_block(np.array([[0.1, 0.9]]), np.array(["x", "y"]), k=3)
    assert first.ids.tolist() == [["y", "x"]]
    second = topk_of_block(np.array([[0.5, 0.9]]), np.array(["a", "b"]), k=3)
    merged = merge_topk(first, second, k=3)
    assert merged.ids.tolist() == [["b", "y", "a"]]


@pytest.mark.parametrize("seed", [0, 1])
def test_blockwise_equals_brute_force_with_many_ties(seed):
    # Small integers: every dot product is exact, so ties are real and must go by pid.
    rng = np.random.default_rng(seed)
    corpus = rng.integers(-2, 3, size=(500, 8)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(30, 8)).astype(np.float32)
    pids = np.array([f"p{i:04d}" for i in rng.permutation(500)])
    result = None
    for start in range(0, 500, 64):
        block = topk_of_block(queries @ corpus[start : start + 64].T, pids[start : start + 64], 20)
        result = merge_topk(result, block, 20)
    ids, scores = brute_force(queries, corpus, pids, 20)
    assert result.ids.tolist() == ids
    assert result.scores.tolist() == scores


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
