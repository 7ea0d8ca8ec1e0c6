"""Candidates in (``--candidates``: a TREC run or Parquet ranking instead of embed and
retrieve) and runs out (``rerank-ray export``), against pytrec_eval (trec_eval itself) and
FlagReranker on the real MS MARCO data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from rerank_ray import candidates as candidates_module
from rerank_ray.candidates import check_known_ids, rank_like_trec_eval, read_candidates
from rerank_ray.cli import main
from rerank_ray.datasets import DataConfig, PreparedData
from rerank_ray.errors import DataError
from rerank_ray.formats import passage_id

NO_EMBEDDER = "/no/such/embedder"  # resolving it would fail: a candidates run must not


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def refusal(path) -> str:
    with pytest.raises(DataError) as caught:
        read_candidates(str(path))
    return str(caught.value)


# ------------------------------------------------------------------ the order, against trec_eval


def trec_eval_ranks(run: dict) -> dict:
    """Each passage's rank as trec_eval orders the run: with that passage the only relevant
    one, its reciprocal rank is 1 / rank."""
    ranks = {}
    for qid, docs in run.items():
        for pid in docs:
            evaluator = pytrec_eval.RelevanceEvaluator({qid: {pid: 1}}, {"recip_rank"})
            ranks[qid, pid] = round(1 / evaluator.evaluate({qid: docs})[qid]["recip_rank"])
    return ranks


def test_the_order_is_trec_evals_ties_and_float32_included(tmp_path):
    run = {
        # exact ties: by pid, descending byte order ("é" > "z" > "B" > "9" > "10")
        "q1": {"10": 2.0, "9": 2.0, "z": 2.0, "B": 2.0, "é": 2.0, "a": 3.5, "c": -1.0},
        # distinct as float64, equal as float32 (what trec_eval compares); -0.0 equals 0.0
        "q2": {"p1": 1.0 + 1e-12, "p2": 1.0, "p3": 1e9 + 1, "p4": 1e9, "p5": 0.0, "p6": -0.0},
        # distinct as float32: the score decides
        "q3": {"x": 1.0 + 2e-7, "y": 1.0, "w": 0.5},
    }
    lines = [
        f"{qid} Q0 {pid} {rank} {score!r} tag"
        for qid, docs in run.items()
        for rank, (pid, score) in enumerate(docs.items(), start=1)  # ranks are not the order
    ]
    candidates = read_candidates(write_lines(tmp_path / "run.trec", lines))
    ranked = rank_like_trec_eval(candidates, top_k=100).to_pylist()
    expected = trec_eval_ranks(run)
    assert {(r["qid"], r["pid"]): r["rank"] for r in ranked} == expected
    assert [r["pid"] for r in ranked if r["qid"] == "q1"] == ["a", "é", "z", "B", "9", "10", "c"]
    assert ranked == sorted(ranked, key=lambda r: (r["qid"], r["rank"]))
    # cut to the top k of that order
    top = rank_like_trec_eval(candidates, top_k=2).to_pylist()
    assert {(r["qid"], r["pid"]) for r in top} == {k for k, rank in expected.items() if rank <= 2}


# ------------------------------------------------------------------ bad input, one line each


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("q1 Q0 p2 2 1.5", "expected 6 fields 'qid Q0 pid rank score tag', got 5"),
        ("q1 Q0 p2 2 1.5 tag extra", "expected 6 fields 'qid Q0 pid rank score tag', got 7"),
        ("q1 Q0 p2 2 high tag", "score 'high' is not a finite number"),
        ("q1 Q0 p2 2 nan tag", "score 'nan' is not a finite number"),
        ("q1 Q0 p2 2 1_0 tag", "score '1_0' is not a finite number"),
        ("q1 Q0 p1 2 0.5 tag", "qid q1, pid p1 appears twice (first at line 1)"),
    ],
)
def test_a_bad_trec_line_is_named(tmp_path, bad_line, message):
    path = write_lines(
        tmp_path / "run.trec", ["q1 Q0 p1 1 2.0 tag", "", "q2 Q0 p1 1 1 tag", bad_line]
    )
    assert refusal(path) == f"{path}, line 4: {message}"


def test_trec_files_that_hold_no_ranking(tmp_path):
    assert refusal(tmp_path / "missing.trec") == f"{tmp_path / 'missing.trec'}: no such file"
    blank = write_lines(tmp_path / "blank.trec", ["", "  "])
    assert refusal(blank) == f"{blank}: no ranked lines ('qid Q0 pid rank score tag')"
    bom = tmp_path / "bom.trec"
    bom.write_bytes("\ufeffq1 Q0 p1 1 2 t\r\nq1 Q0 p2 2 1 t\r\n".encode())
    assert read_candidates(str(bom)).table.column("qid").to_pylist() == ["q1", "q1"]


def test_parquet_candidates_and_their_bad_rows(tmp_path):
    path = tmp_path / "run.parquet"
    pq.write_table(pa.table({"qid": [7, 7, 8], "pid": [1, 2, 1], "score": [0.5, 2, 1.0]}), path)
    candidates = read_candidates(str(path))
    assert candidates.format == "parquet"
    assert rank_like_trec_eval(candidates, 10).to_pydict() == {
        "qid": ["7", "7", "8"], "pid": ["2", "1", "1"], "rank": [1, 2, 1], "score": [2, 0.5, 1],
    }  # fmt: skip
    for table, message in [
        (pa.table({"qid": ["a"], "pid": ["b"]}), "missing column 'score' (columns qid, pid, score)"),
        (pa.table({"qid": ["a"], "pid": ["b"], "score": ["x"]}),
         "column 'score' must hold numbers, not string"),
        (pa.table({"qid": ["a", "a"], "pid": ["b", None], "score": [1, 2]}), "row 2: pid is empty"),
        (pa.table({"qid": ["a", "a"], "pid": ["b", "c"], "score": [1, np.inf]}),
         "row 2: score inf is not a finite number"),
        (pa.table({"qid": ["a", "b", "a"], "pid": ["c", "c", "c"], "score": [1, 2, 3]}),
         "row 3: qid a, pid c appears twice (first at row 1)"),
    ]:  # fmt: skip
        pq.write_table(table, path)
        assert refusal(path) == f"{path}{', ' if message.startswith('row') else ': '}{message}"


@pytest.fixture
def prepared(tmp_path):
    pq.write_table(
        pa.table({"qid": ["q1", "q2"], "text": ["a", "b"]}), tmp_path / "queries.parquet"
    )
    (tmp_path / "corpus").mkdir()
    for part, pids in enumerate((["p1", "p2"], ["p3"], ["p4", "p5"])):
        table = pa.table({"pid": pids, "text": ["t"] * len(pids)})
        pq.write_table(table, tmp_path / "corpus" / f"part-{part}.parquet")
    return PreparedData(
        str(tmp_path / "corpus"), str(tmp_path / "queries.parquet"), "unused", 5, 2, 0
    )


def test_candidates_outside_the_queries_or_the_corpus(tmp_path, prepared, monkeypatch):
    monkeypatch.setattr(candidates_module, "CORPUS_CHUNK_ROWS", 2)  # several chunks
    data = DataConfig(corpus="collection.tsv", queries="queries.tsv", qrels="qrels.tsv")
    good = ["q1 Q0 p5 1 3 t", "q1 Q0 p1 2 2 t", "q2 Q0 p3 1 1 t"]
    check_known_ids(read_candidates(write_lines(tmp_path / "ok.trec", good)), prepared, data)
    for extra, message in [
        ("q3 Q0 p1 1 1 t", "qid q3 is not in queries.tsv"),
        ("q2 Q0 p9 2 0 t", "pid p9 is not in collection.tsv"),
    ]:
        path = write_lines(tmp_path / "bad.trec", [*good, extra, "q2 Q0 p8 3 0 t"])
        with pytest.raises(DataError) as caught:
            check_known_ids(read_candidates(path), prepared, data)
        assert str(caught.value) == f"{path}, line 4: {message}"
    dataset = DataConfig(dataset="dev.jsonl")
    with pytest.raises(DataError, match=r"line 4: pid p9 is not in the corpus \(positives of"):
        check_known_ids(read_candidates(path), prepared, dataset)
    beir = DataConfig(beir="scifact")
    with pytest.raises(DataError, match=r"line 4: pid p9 is not in scifact/corpus.jsonl$"):
        check_known_ids(read_candidates(path), prepared, beir)


def test_candidates_on_an_object_store(s3_bucket, tmp_path):
    """The same candidates, as a TREC run and as a Parquet folder, read from S3."""
    from rerank_ray.io import write_text
    from rerank_ray.parquet import write_table

    lines = ["q1 Q0 p1 1 2.5 t", "q1 Q0 p2 2 2.5 t", "q2 Q0 p1 1 -1 t"]
    local = read_candidates(write_lines(tmp_path / "run.trec", lines))
    write_text(f"{s3_bucket}/run.trec", "".join(line + "\n" for line in lines))
    remote = read_candidates(f"{s3_bucket}/run.trec")
    assert remote.format == "trec" and remote.table.equals(local.table)
    table = local.table.select(["qid", "pid", "score"])
    write_table(table.slice(0, 2), f"{s3_bucket}/run/part-0.parquet")
    write_table(table.slice(2), f"{s3_bucket}/run/part-1.parquet")
    parquet = read_candidates(f"{s3_bucket}/run")
    assert parquet.format == "parquet"
    assert rank_like_trec_eval(parquet, 10).equals(rank_like_trec_eval(local, 10))


def test_candidates_exclude_supplied_vectors(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "r"), "--candidates", "run.trec",
                 "--corpus-embeddings", "vectors.parquet"])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "rerank-ray: error: --candidates replace embedding and retrieval; --corpus-embeddings"
        " would not be used\n"
    )


# ------------------------------------------------------------------ a run from candidates


def trec_run_dict(path) -> dict:
    run: dict = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        qid, _, pid, _, score, _ = line.split()
        run.setdefault(qid, {})[pid] = float(score)
    return run


def trec_eval_metrics(run: dict, qrels: dict) -> dict:
    """The report's metrics by pytrec_eval; MRR@k from the full reciprocal rank (1 / rank of
    the first relevant passage, in trec_eval's own order), 0 beyond k."""
    measures = {"recall.1,10,100", "ndcg_cut.10", "recip_rank"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    values = list(per_query.values())
    out = {f"recall@{k}": np.mean([v[f"recall_{k}"] for v in values]) for k in (1, 10, 100)}
    out["ndcg@10"] = np.mean([v["ndcg_cut_10"] for v in values])
    for k in (1, 10):
        out[f"mrr@{k}"] = np.mean(
            [v["recip_rank"] if v["recip_rank"] >= 1 / k - 1e-12 else 0.0 for v in values]
        )
    return out


def test_a_run_from_candidates_reranks_them_and_exports_what_it_evaluated(
    ray_session, msmarco, tmp_path, capsys
):
    """MS MARCO rows 1-40 as the corpus, rows 1-5 as queries, and a TREC run written here:
    every passage of the corpus for every query, scores with ties. The run needs no embedder,
    ranks the candidates as trec_eval does, reranks them as FlagReranker scores them, and its
    exported files give back, through pytrec_eval, the figures of metrics.json."""
    from FlagEmbedding import FlagReranker

    rows = [json.loads(line) for line in (msmarco / "dev.jsonl").open().readlines()[:40]]
    pids = list(dict.fromkeys(passage_id(text) for row in rows for text in row["positive"]))
    rng = np.random.default_rng(7)
    lines = []
    for qid in map(str, range(5)):
        scores = rng.integers(0, 12, len(pids)) / 4  # many ties
        lines += [f"{qid} Q0 {pid} 1 {score} bm25" for pid, score in zip(pids, scores)]
    run_file = write_lines(tmp_path / "run.trec", lines)
    out = tmp_path / "run"
    status = main(
        [
            "run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "40",
            "--num-queries", "5", "--candidates", run_file, "--embedder", NO_EMBEDDER,
            "--top-k", "30", "--reranker", "minilm-smoke", "--rerank-top-k", "10",
            "--reranker-max-length", "128", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    assert f"candidates: {run_file}   reranker: minilm-smoke" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["embedder"] is None and "embed" not in manifest["stages"]
    assert not (out / "embeddings").exists()
    retrieve = manifest["stages"]["retrieve"]
    assert retrieve["candidates"]["path"] == run_file and retrieve["candidates"]["tags"] == ["bm25"]
    assert (retrieve["rows"], retrieve["depth"], retrieve["queries_without_candidates"]) == (
        150,
        30,
        0,
    )
    assert "recall@100" not in metrics["retrieval"]  # 30 passages a query: not measured

    qrels: dict = {}
    for row in pq.read_table(out / "data" / "qrels.parquet").to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    # The retrieval row is trec_eval's on the candidates file (cutoffs within the top 30).
    on_file = trec_eval_metrics(trec_run_dict(run_file), qrels)
    for name, value in metrics["retrieval"].items():
        assert value == pytest.approx(on_file[name], abs=1e-12), name

    # Rerank scores are FlagReranker's on the same pairs: the top 10 of trec_eval's order.
    rerank = pq.read_table(out / "rerank" / "minilm-smoke.parquet").to_pylist()
    ranks = trec_eval_ranks(trec_run_dict(run_file))
    assert {(r["qid"], r["pid"], r["retrieval_rank"]) for r in rerank} == {
        (qid, pid, rank) for (qid, pid), rank in ranks.items() if rank <= 10
    }
    queries = dict(zip(*pq.read_table(out / "data" / "queries.parquet").to_pydict().values()))
    passages = dict(zip(*pq.read_table(out / "data" / "corpus.parquet").to_pydict().values()))
    smoke = manifest["models"]["rerankers"]["minilm-smoke"]
    bare = FlagReranker(smoke["path"], use_fp16=False, devices=["cpu"])
    expected = bare.compute_score(
        [(queries[r["qid"]], passages[r["pid"]]) for r in rerank], max_length=128
    )
    assert np.max(np.abs(np.array([r["score"] for r in rerank]) - expected)) < 1e-4

    # Exported runs, read back by pytrec_eval, give metrics.json's figures.
    assert main(["export", str(out), "--format", "trec"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"retrieval: {out / 'retrieval.trec'}",
        f"minilm-smoke: {out / 'rerank' / 'minilm-smoke.trec'}",
    ]
    paths = {
        "retrieval": out / "retrieval.trec",
        "minilm-smoke": out / "rerank" / "minilm-smoke.trec",
    }
    for system, path in paths.items():
        fields = [line.split() for line in path.read_text().splitlines()]
        assert {f[5] for f in fields} == {"bm25" if system == "retrieval" else "minilm-smoke"}
        assert {f[1] for f in fields} == {"Q0"} and len(fields) == 150
        back = trec_eval_metrics(trec_run_dict(path), qrels)
        for name, value in metrics[system].items():
            assert value == pytest.approx(back[name], abs=1e-12), (system, name)
        per_query = [int(f[3]) for f in fields if f[0] == "0"]
        assert per_query == list(range(1, 31))
    elsewhere = tmp_path / "exports"
    assert main(["export", str(out), "--out", str(elsewhere)]) == 0
    assert (elsewhere / "minilm-smoke.trec").read_text() == paths["minilm-smoke"].read_text()

    # A stage that ranks a system again removes that system's export from the run directory.
    assert main(["rerank", "--run", str(out), "--reranker", "none", "--quiet"]) == 0
    assert (out / "retrieval.trec").exists() and not (out / "rerank").exists()
    assert main(["export", str(out)]) == 0 and not (out / "rerank").exists()
    assert main(["retrieve", "--run", str(out), "--top-k", "20"]) == 0
    assert not (out / "retrieval.trec").exists()


def test_parquet_candidates_on_the_official_tsv_layout(ray_session, msmarco, tmp_path):
    """The official layout's integer ids, given as Parquet integers, an unjudged query among
    them: the retrieval row is trec_eval's on the same ranking, measured no deeper than the
    candidates go."""
    queries = (msmarco / "queries.tsv").read_text(encoding="utf-8").splitlines()[:5]
    qids = [line.split("\t")[0] for line in queries]
    qrels = [  # the fifth query stays unjudged
        line
        for line in (msmarco / "qrels.tsv").read_text(encoding="utf-8").splitlines()
        if line.split()[0] in qids[:4]
    ]
    judged = {line.split()[2] for line in qrels}
    collection = [
        line
        for number, line in enumerate((msmarco / "collection.tsv").open(encoding="utf-8"))
        if number < 20 or line.split("\t")[0] in judged
    ]
    pids = [line.split("\t")[0] for line in collection]
    for name, lines in (("collection", collection), ("queries", queries), ("qrels", qrels)):
        write_lines(tmp_path / f"{name}.tsv", [line.rstrip("\n") for line in lines])
    rng = np.random.default_rng(3)
    table = pa.table(
        {
            "qid": np.repeat(np.array(qids, dtype=np.int64), len(pids)),
            "pid": np.tile(np.array(pids, dtype=np.int64), len(qids)),
            "score": rng.integers(0, 5, len(qids) * len(pids)).astype(np.float64),
        }
    )
    pq.write_table(table, tmp_path / "candidates.parquet")
    out = tmp_path / "run"
    assert main(
        [
            "run", "--corpus", str(tmp_path / "collection.tsv"),
            "--queries", str(tmp_path / "queries.tsv"), "--qrels", str(tmp_path / "qrels.tsv"),
            "--candidates", str(tmp_path / "candidates.parquet"), "--embedder", NO_EMBEDDER,
            "--reranker", "none", "--out", str(out), "--quiet",
        ]
    ) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["retrieval"]
    evaluation = json.loads((out / "manifest.json").read_text())["stages"]["evaluate"]
    assert (evaluation["evaluated_queries"], evaluation["queries_without_relevant"]) == (4, 1)
    run: dict = {}
    for row in table.to_pylist():
        run.setdefault(str(row["qid"]), {})[str(row["pid"])] = row["score"]
    judgements: dict = {}
    for line in qrels:
        qid, _, pid, relevance = line.split()
        judgements.setdefault(qid, {})[pid] = int(relevance)
    reference = trec_eval_metrics(run, judgements)
    # --top-k 100, but about 24 candidates a query: recall@100 would be recall@24 mislabelled
    assert set(metrics) == {"recall@1", "recall@10", "mrr@1", "mrr@10", "ndcg@10"}
    for name, value in metrics.items():
        assert value == pytest.approx(reference[name], abs=1e-12), name


def test_a_candidates_run_refuses_bad_candidates_before_ray(msmarco, tmp_path, monkeypatch, capsys):
    def refuse(address):
        raise AssertionError("Ray was started before the bad candidates were refused")

    monkeypatch.setattr("rerank_ray.pipeline.connect_ray", refuse)
    rows = [json.loads(line) for line in (msmarco / "dev.jsonl").open().readlines()[:10]]
    known = passage_id(rows[0]["positive"][0])

    def run(lines):
        path = write_lines(tmp_path / "run.trec", lines)
        args = ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "10",
                "--num-queries", "3", "--candidates", path, "--embedder", NO_EMBEDDER,
                "--reranker", "none", "--out", str(tmp_path / "run"), "--quiet"]  # fmt: skip
        assert main(args) == 2
        error = capsys.readouterr().err
        assert (
            len(error.splitlines()) == 1 and not (tmp_path / "run" / "retrieval.parquet").exists()
        )
        return path, error.strip()

    # The format: before any stage runs.
    path, error = run([f"0 Q0 {known} 1 1.0 t", f"1 Q0 {known} 1 x t"])
    assert error == f"rerank-ray: error: {path}, line 2: score 'x' is not a finite number"
    assert not (tmp_path / "run" / "data").exists()
    # The ids: once the data is prepared, before the retrieval is written.
    path, error = run([f"0 Q0 {known} 1 1.0 t", "2 Q0 nowhere 1 0.5 t"])
    dataset = msmarco / "dev.jsonl"
    assert error == (
        f"rerank-ray: error: {path}, line 2: pid nowhere is not in the corpus (positives of"
        f" {dataset})"
    )
    path, error = run([f"0 Q0 {known} 1 1.0 t", f"3 Q0 {known} 1 0.5 t"])
    assert error == f"rerank-ray: error: {path}, line 2: qid 3 is not in the queries of {dataset}"


def test_queries_without_candidates_are_counted_in_the_summary_and_the_report(
    msmarco, tmp_path, capsys
):
    """Candidates for one of three queries: the figures average over every query, so the
    summary and report.md say how many had none (no Ray: the data is a dataset's positives)."""
    rows = [json.loads(line) for line in (msmarco / "dev.jsonl").open().readlines()[:10]]
    pids = list(dict.fromkeys(passage_id(text) for row in rows for text in row["positive"]))

    def run(qids, out):
        lines = [
            f"{qid} Q0 {pid} 1 {len(pids) - i} t" for qid in qids for i, pid in enumerate(pids)
        ]
        path = write_lines(tmp_path / f"{out}.trec", lines)
        args = ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "10",
                "--num-queries", "3", "--candidates", path, "--embedder", NO_EMBEDDER,
                "--reranker", "none", "--top-k", "5", "--out", str(tmp_path / out), "--quiet"]  # fmt: skip
        assert main(args) == 0
        return capsys.readouterr().out, (tmp_path / out / "report.md").read_text()

    note = "2 of 3 queries have no candidates (they count as retrieving nothing)."
    printed, report = run(["0"], "one")
    assert f"NOTE: {note}" in printed.splitlines() and note in report.splitlines()
    printed, report = run(["0", "1", "2"], "all")
    assert "no candidates" not in printed and "no candidates" not in report


def test_rerank_depths_without_a_reranker_are_said_not_swept(msmarco, tmp_path, capsys):
    rows = [json.loads(line) for line in (msmarco / "dev.jsonl").open().readlines()[:10]]
    pids = list(dict.fromkeys(passage_id(text) for row in rows for text in row["positive"]))
    lines = [f"{q} Q0 {pid} 1 {len(pids) - i} t" for q in "012" for i, pid in enumerate(pids)]
    path = write_lines(tmp_path / "run.trec", lines)
    args = ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "10",
            "--num-queries", "3", "--candidates", path, "--embedder", NO_EMBEDDER,
            "--reranker", "none", "--top-k", "5", "--rerank-depths", "2", "--out",
            str(tmp_path / "r"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert "--rerank-depths are not swept: --reranker is none" in capsys.readouterr().err
