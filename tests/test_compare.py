"""``rerank-ray compare``: two real runs (BM25, dense MiniLM) on the same data, their per-query
values against pytrec_eval on their rankings, the tests against significance's on those
vectors, and runs on other qrels refused."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import pytrec_eval

from rerank_ray.cli import main
from rerank_ray.formats import passage_id
from rerank_ray.significance import compare_systems


def _run(msmarco, out, *options, queries="8"):
    code = main(
        ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "60", "--num-queries",
         queries, "--reranker", "none", "--top-k", "10", "--out", str(out), "--no-cache", "-q",
         *options]
    )  # fmt: skip
    assert code == 0


def _pytrec_per_query(out) -> dict:
    qrels: dict = {}
    for row in pq.read_table(out / "data" / "qrels.parquet").to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    run: dict = {}
    for row in pq.read_table(out / "retrieval.parquet").to_pylist():
        run.setdefault(row["qid"], {})[row["pid"]] = 1000.0 - row["rank"]
    full = pytrec_eval.RelevanceEvaluator(qrels, {"recall.1,10", "ndcg_cut.10"}).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    top1 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:1]) for q, d in run.items()}
    rr1 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top1)
    return {
        q: {"recall@1": v["recall_1"], "recall@10": v["recall_10"], "ndcg@10": v["ndcg_cut_10"],
            "mrr@10": rr[q]["recip_rank"], "mrr@1": rr1[q]["recip_rank"]}
        for q, v in full.items()
    }  # fmt: skip


def test_two_runs_compared_on_their_shared_metrics(ray_session, msmarco, tmp_path, capsys):
    _run(msmarco, tmp_path / "bm25", "--retriever", "bm25")
    _run(msmarco, tmp_path / "dense", "--embedder", "minilm")
    capsys.readouterr()
    code = main(["compare", str(tmp_path / "bm25"), str(tmp_path / "dense"), "--out",
                 str(tmp_path / "cmp")])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| bm25:retrieval (baseline) |" in printed and "| dense:retrieval |" in printed
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["baseline"] == "bm25:retrieval"
    expected = {
        "bm25:retrieval": _pytrec_per_query(tmp_path / "bm25"),
        "dense:retrieval": _pytrec_per_query(tmp_path / "dense"),
    }
    metrics = ["recall@1", "recall@10", "mrr@1", "mrr@10", "ndcg@10"]
    for system, queries in expected.items():
        for metric in metrics:
            mean = sum(v[metric] for v in queries.values()) / len(queries)
            assert result["systems"][system][metric] == pytest.approx(mean, abs=1e-12)
    mine = {c.metric: c.to_dict() for c in compare_systems(expected, "bm25:retrieval", metrics)}
    assert sorted(c["metric"] for c in result["comparisons"]) == sorted(metrics)
    for comparison in result["comparisons"]:
        assert comparison == pytest.approx(mine[comparison["metric"]])
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| p (randomization) | p (t-test) | p (Holm) |" in markdown
    marked = any(c["significant"] for c in result["comparisons"])
    assert ("significant at α" in markdown) == marked == ("*" in printed)

    _run(msmarco, tmp_path / "other", "--retriever", "bm25", queries="5")
    code = main(["compare", str(tmp_path / "bm25"), str(tmp_path / "other"), "--out",
                 str(tmp_path / "cmp2")])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "different qrels" in error
    code = main(["compare", str(tmp_path / "bm25"), "--out", str(tmp_path / "cmp3"),
                 "--baseline", "nope"])  # fmt: skip
    assert code == 2 and "baseline 'nope' is none of the systems" in capsys.readouterr().err


def test_an_evaluate_cut_short_leaves_no_results_and_compare_refuses_the_run(
    ray_session, msmarco, tmp_path, capsys, monkeypatch
):
    """The last results are removed when evaluate starts and the report is written before the
    stage is recorded: a cut leaves neither old nor half-new results that look finished."""
    from rerank_ray import report

    run = tmp_path / "bm25"
    _run(msmarco, run, "--retriever", "bm25")
    outputs = ["metrics.json", "per_query.parquet", "significance.json", "report.md", "report.png"]
    assert all((run / name).exists() for name in outputs)

    def cut(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", cut)
    assert main(["evaluate", "--run", str(run), "--metrics", "P@5 nDCG@3", "-q"]) == 130
    assert not any((run / name).exists() for name in ("metrics.json", "report.md"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert "evaluate" not in manifest["stages"]
    capsys.readouterr()
    code = main(["compare", str(run), "--out", str(tmp_path / "cmp")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "not evaluated" in error
    monkeypatch.undo()
    assert main(["evaluate", "--run", str(run), "-q"]) == 0
    assert all((run / name).exists() for name in outputs)


def test_runs_that_share_no_metric_are_refused_naming_each_run_and_its_metrics(
    msmarco, tmp_path, capsys
):
    """Two runs of the same data evaluated on disjoint metrics: no table to fill, so nothing
    is written (the runs rank candidates written here: no Ray, no model)."""
    rows = [json.loads(line) for line in (msmarco / "dev.jsonl").open().readlines()[:10]]
    pids = list(dict.fromkeys(passage_id(text) for row in rows for text in row["positive"]))
    lines = [f"{q} Q0 {pid} 1 {len(pids) - i} t\n" for q in "012" for i, pid in enumerate(pids)]
    (tmp_path / "run.trec").write_text("".join(lines))
    for name, metrics in (("a", "R@1 nDCG@5"), ("b", "P@5 AP@5")):
        code = main(
            ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "10",
             "--num-queries", "3", "--candidates", str(tmp_path / "run.trec"), "--embedder",
             "/no/such/embedder", "--reranker", "none", "--top-k", "5", "--metrics", metrics,
             "--out", str(tmp_path / name), "-q"]
        )  # fmt: skip
        assert code == 0
    capsys.readouterr()
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                 str(tmp_path / "cmp")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        f"rerank-ray: error: {tmp_path / 'a'} (recall@1, ndcg@5) and {tmp_path / 'b'} (p@5,"
        " map@5) share no metric; evaluate them with the same --metrics\n"
    )
    assert not (tmp_path / "cmp").exists()
