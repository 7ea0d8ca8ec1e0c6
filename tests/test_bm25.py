"""BM25 against its formula computed here, and against a direct bm25s script on the seed
protocol's passages; reciprocal-rank fusion against its definition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.bm25 import BM25Options, bm25_search, reciprocal_rank_fusion, tokenize


def _write(path, ids_name, rows):
    pq.write_table(pa.table({ids_name: [r[0] for r in rows], "text": [r[1] for r in rows]}), path)
    return str(path)


def _terms(text: str) -> list[str]:
    tokenized = tokenize([text])
    words = {index: word for word, index in tokenized.vocab.items()}
    return [words[i] for i in tokenized.ids[0]]


def test_scores_follow_lucenes_bm25_formula(tmp_path):
    passages = [
        ("p1", "The giant panda is a bear native to south central China."),
        ("p2", "Pandas eat bamboo; a panda eats for twelve hours a day."),
        ("p3", "Red pandas are not bears."),
        ("p4", "Python's pandas library reads tables."),
    ]
    queries = [("q1", "what does a giant panda eat"), ("q2", "bear")]
    corpus = _write(tmp_path / "c.parquet", "pid", passages)
    query_table = _write(tmp_path / "q.parquet", "qid", queries)
    k1, b = 1.2, 0.6
    got = bm25_search(corpus, query_table, k=4, options=BM25Options(k1=k1, b=b)).to_pylist()
    documents = {pid: _terms(text) for pid, text in passages}
    n = len(documents)
    average = sum(len(t) for t in documents.values()) / n
    for qid, text in queries:
        expected = {}
        for pid, terms in documents.items():
            score = 0.0
            for term in set(_terms(text)):
                df = sum(term in t for t in documents.values())
                tf = terms.count(term)
                if tf:
                    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                    # Lucene's variant: no (k1 + 1) factor, which orders the same
                    score += idf * tf / (tf + k1 * (1 - b + b * len(terms) / average))
            expected[pid] = score
        rows = [r for r in got if r["qid"] == qid]
        assert [r["rank"] for r in rows] == [1, 2, 3, 4]
        ordered = sorted(expected, key=lambda pid: (-expected[pid], pid))
        assert [r["pid"] for r in rows] == ordered
        for row in rows:
            assert row["score"] == pytest.approx(expected[row["pid"]], rel=1e-5, abs=1e-6)


def test_the_seed_passages_rank_as_a_direct_bm25s_script_ranks_them(msmarco, tmp_path):
    import json

    import bm25s
    import Stemmer

    with open(msmarco / "dev.jsonl") as lines:
        rows = [json.loads(line) for _, line in zip(range(300), lines)]
    passages = list(dict.fromkeys(p for row in rows for p in row["positive"]))
    corpus = _write(tmp_path / "c.parquet", "pid", [(f"p{i}", t) for i, t in enumerate(passages)])
    queries = _write(
        tmp_path / "q.parquet", "qid", [(f"q{i}", r["query"]) for i, r in enumerate(rows[:40])]
    )
    got = bm25_search(corpus, queries, k=10, options=BM25Options()).to_pylist()

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(bm25s.tokenize(passages, stopwords="en", stemmer=stemmer))
    found, scores = retriever.retrieve(
        bm25s.tokenize([r["query"] for r in rows[:40]], stopwords="en", stemmer=stemmer), k=10
    )
    for q in range(40):
        mine = [r for r in got if r["qid"] == f"q{q}"]
        assert {r["pid"] for r in mine} == {f"p{i}" for i in found[q]}
        assert sorted(r["score"] for r in mine) == pytest.approx(sorted(scores[q]), rel=1e-6)
    hits = sum(
        r["rank"] == 1 and r["pid"] == f"p{passages.index(rows[int(r['qid'][1:])]['positive'][0])}"
        for r in got
    )
    assert hits >= 20  # BM25 finds most of these queries' own positive first


def test_reciprocal_rank_fusion_is_the_sum_of_reciprocal_ranks():
    dense = pa.table(
        {"qid": ["q"] * 3, "pid": ["a", "b", "c"], "rank": [1, 2, 3], "score": [0.9, 0.8, 0.7]}
    )
    sparse = pa.table(
        {"qid": ["q"] * 3, "pid": ["c", "d", "a"], "rank": [1, 2, 3], "score": [9.0, 8.0, 7.0]}
    )
    fused = reciprocal_rank_fusion([dense, sparse], k=3, rrf_k=60).to_pylist()
    expected = {"a": 1 / 61 + 1 / 63, "b": 1 / 62, "c": 1 / 63 + 1 / 61, "d": 1 / 62}
    top = sorted(expected, key=lambda p: (-expected[p], p))[:3]
    assert [r["pid"] for r in fused] == top == ["a", "c", "b"]
    assert [r["score"] for r in fused] == pytest.approx([expected[p] for p in top], rel=1e-6)


def _pytrec(retrieval_path, qrels_path) -> dict:
    import pytrec_eval

    qrels: dict = {}
    for row in pq.read_table(qrels_path).to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    run: dict = {}
    for row in pq.read_table(retrieval_path).to_pylist():
        run.setdefault(row["qid"], {})[row["pid"]] = 1000.0 - row["rank"]
    measures = {"recall.10", "ndcg_cut.10", "map_cut.10", "P.5"}
    values = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    keys = {
        "recall@10": "recall_10",
        "ndcg@10": "ndcg_cut_10",
        "map@10": "map_cut_10",
        "p@5": "P_5",
    }
    return {name: sum(v[key] for v in values.values()) / len(values) for name, key in keys.items()}


def test_a_bm25_run_needs_no_embedder_and_its_ranking_is_bm25s(ray_session, msmarco, tmp_path):
    from rerank_ray.cli import main

    out = tmp_path / "run"
    code = main(
        ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "60", "--num-queries",
         "8", "--retriever", "bm25", "--embedder", "/no/such/embedder", "--reranker", "none",
         "--top-k", "10", "--metrics", "R@10 nDCG@10 AP@10 P@5", "--out", str(out), "-q"]
    )  # fmt: skip
    assert code == 0
    expected = bm25_search(
        str(out / "data" / "corpus.parquet"),
        str(out / "data" / "queries.parquet"),
        10,
        BM25Options(),
    )
    assert pq.read_table(out / "retrieval.parquet").equals(expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["embedder"] is None and not (out / "embeddings").exists()
    assert manifest["stages"]["retrieve"]["retriever"] == "bm25"
    metrics = json.loads((out / "metrics.json").read_text())["retrieval"]
    reference = _pytrec(out / "retrieval.parquet", out / "data" / "qrels.parquet")
    assert list(metrics) == ["recall@10", "ndcg@10", "map@10", "p@5"]  # as asked, in that order
    for name, value in reference.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12)


def test_a_hybrid_run_fuses_the_dense_and_bm25_rankings(ray_session, msmarco, tmp_path):
    from rerank_ray.cli import main
    from rerank_ray.embed import embedding_matrix

    out = tmp_path / "run"
    code = main(
        ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "60", "--num-queries",
         "8", "--retriever", "hybrid", "--rrf-k", "30", "--embedder", "minilm", "--reranker",
         "none", "--top-k", "10", "--out", str(out), "--no-cache", "-q"]
    )  # fmt: skip
    assert code == 0
    corpus = pq.read_table(out / "embeddings" / "corpus")
    queries = pq.read_table(out / "embeddings" / "queries")
    scores = embedding_matrix(queries["embedding"]) @ embedding_matrix(corpus["embedding"]).T
    pids = corpus["pid"].to_pylist()
    rows = []
    for qid, row in zip(queries["qid"].to_pylist(), scores):
        top = sorted(range(len(pids)), key=lambda i: (-row[i], pids[i]))[:10]
        rows += [(qid, pids[i], rank) for rank, i in enumerate(top, start=1)]
    dense = pa.table(
        {"qid": [r[0] for r in rows], "pid": [r[1] for r in rows], "rank": [r[2] for r in rows]}
    )
    bm25 = bm25_search(
        str(out / "data" / "corpus.parquet"),
        str(out / "data" / "queries.parquet"),
        10,
        BM25Options(),
    )
    expected = reciprocal_rank_fusion([dense, bm25], k=10, rrf_k=30)
    got = pq.read_table(out / "retrieval.parquet")
    assert got.select(["qid", "pid", "rank"]).equals(expected.select(["qid", "pid", "rank"]))


def test_the_index_is_cached_by_content_and_a_damaged_entry_is_rebuilt(ray_session, tmp_path):
    from rerank_ray.bm25 import bm25_retrieval

    passages = [
        (f"p{i}", f"passage {i} about {'pandas bears' if i % 3 else 'python tables'}")
        for i in range(30)
    ]
    corpus = _write(tmp_path / "c.parquet", "pid", passages)
    queries = _write(tmp_path / "q.parquet", "qid", [("q1", "bears"), ("q2", "python tables")])
    expected = bm25_search(corpus, queries, 5, BM25Options())
    cache = tmp_path / "cache"
    outs = [tmp_path / f"r{i}.parquet" for i in range(4)]
    first = bm25_retrieval(
        corpus, queries, str(outs[0]), 5, BM25Options(), cache_root=str(cache), corpus_hash="h1"
    )
    again = bm25_retrieval(
        corpus, queries, str(outs[1]), 5, BM25Options(), cache_root=str(cache), corpus_hash="h1"
    )
    assert first["index"].startswith("built, cached at") and again["index"].startswith(
        "from the cache"
    )
    entry = again["index"].removeprefix("from the cache ")
    for out in outs[:2]:
        assert pq.read_table(out).equals(expected)
    other = bm25_retrieval(
        corpus,
        queries,
        str(outs[2]),
        5,
        BM25Options(k1=1.2),
        cache_root=str(cache),
        corpus_hash="h1",
    )
    assert other["index"].startswith("built")  # other parameters, another entry
    damaged = sorted(Path(entry).glob("*.npy"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    rebuilt = bm25_retrieval(
        corpus, queries, str(outs[3]), 5, BM25Options(), cache_root=str(cache), corpus_hash="h1"
    )
    assert rebuilt["index"].startswith("built, cached at") and pq.read_table(outs[3]).equals(
        expected
    )
    assert rebuilt["index"] == f"built, cached at {entry}"
