"""Metric definitions: hand-computed cases and agreement with pytrec_eval on random runs."""

from __future__ import annotations

import math
import random

import pytest
import pytrec_eval

from rerank_ray.metrics import (
    evaluate,
    ndcg_at_k,
    parse_metric,
    per_query,
    recall_at_k,
    reciprocal_rank_at_k,
)


def _one(ranking, qrels, metric, k):
    """The metric of one query's ranking ([] when the query has no relevant passage)."""
    return per_query({"q": ranking}, {"q": qrels}, metric, k)


def test_recall_hand_computed():
    qrels = {"a": 1, "b": 2, "c": 0}  # c is judged but not relevant
    assert _one(["x", "a", "c"], qrels, recall_at_k, 1) == [0.0]
    assert _one(["x", "a", "c"], qrels, recall_at_k, 2) == [0.5]
    assert _one(["b", "a"], qrels, recall_at_k, 2) == [1.0]
    assert _one([], qrels, recall_at_k, 10) == [0.0]


def test_reciprocal_rank_hand_computed():
    qrels = {"a": 1, "b": 1}
    assert _one(["x", "y", "b", "a"], qrels, reciprocal_rank_at_k, 10) == [pytest.approx(1 / 3)]
    assert _one(["x", "y", "b", "a"], qrels, reciprocal_rank_at_k, 2) == [0.0]
    assert _one(["a"], qrels, reciprocal_rank_at_k, 1) == [1.0]
    assert _one(["x", "c"], {"c": 0}, reciprocal_rank_at_k, 10) == []  # not averaged


def test_ndcg_hand_computed():
    # ranking [b (rel 1), x, a (rel 2)]; ideal [a, b]
    dcg = 1 / math.log2(2) + 0 + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert _one(["b", "x", "a"], {"a": 2, "b": 1}, ndcg_at_k, 3) == [pytest.approx(dcg / idcg)]
    # the cutoff drops a from the ranking and b from the ideal
    assert _one(["b", "x", "a"], {"a": 2, "b": 1}, ndcg_at_k, 1) == [pytest.approx(1 / 2)]
    assert _one(["a", "b"], {"a": 2, "b": 1}, ndcg_at_k, 10) == [pytest.approx(1.0)]


def test_evaluate_excludes_queries_without_relevant_and_scores_missing_rankings_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 1}}
    rankings = {"q1": ["a"], "q2": ["b"], "q4": ["z"]}  # q3 has no ranking
    result = evaluate(rankings, qrels, ["recall@1", "mrr@10"])
    assert result.metrics == {"recall@1": 0.5, "mrr@10": 0.5}
    assert result.evaluated_queries == 2
    assert result.queries_without_relevant == 2  # q2 (judged, none relevant) and q4 (unjudged)


def test_parse_metric_rejects_unknown_names():
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    for bad in ("bpref@10", "recall", "recall@0", "recall@x"):
        with pytest.raises(ValueError):
            parse_metric(bad)


def _pytrec(rankings, qrels, k):
    """pytrec_eval on rankings given as rank-derived scores (no ties for trec_eval to break)."""
    run = {q: {p: float(len(r) - i) for i, p in enumerate(r)} for q, r in rankings.items()}
    run_at_k = {q: {p: float(len(r) - i) for i, p in enumerate(r[:k])} for q, r in rankings.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {f"recall.{k}", f"ndcg_cut.{k}"}).evaluate(run)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run_at_k)
    return {
        f"recall@{k}": sum(v[f"recall_{k}"] for v in full.values()) / len(full),
        f"ndcg@{k}": sum(v[f"ndcg_cut_{k}"] for v in full.values()) / len(full),
        f"mrr@{k}": sum(v["recip_rank"] for v in cut.values()) / len(cut),
    }


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_pytrec_eval_on_random_runs(seed):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels, rankings = {}, {}
    for q in range(40):
        judged = rng.sample(docs, rng.randint(1, 6))
        qrels[f"q{q}"] = {d: rng.choice([1, 1, 2, 3]) for d in judged}
        if rng.random() < 0.2:
            qrels[f"q{q}"][rng.choice(docs)] = 0  # judged non-relevant
        rankings[f"q{q}"] = rng.sample(docs, rng.randint(5, 40))
    for k in (1, 3, 10, 100):
        ours = evaluate(rankings, qrels, [f"recall@{k}", f"mrr@{k}", f"ndcg@{k}"]).metrics
        reference = _pytrec(rankings, qrels, k)
        for name, value in reference.items():
            assert ours[name] == pytest.approx(value, abs=1e-12), (name, seed)


def _pytrec_by_convention(rankings, qrels, k):
    """pytrec_eval's per-query values, averaged by this project's convention, spelled out.

    pytrec_eval scores every query of the run that has judgements, including a query whose
    judgements are all grade 0 (it scores 0), and leaves out a query the run lacks. The
    project's convention (:func:`rerank_ray.metrics.evaluate`) averages over the queries with
    at least one passage of grade >= 1 only: a query without one is excluded (whether its
    judgements are all 0 or it has none), and such a query that the run lacks scores 0.
    """
    run = {q: {p: float(len(r) - i) for i, p in enumerate(r)} for q, r in rankings.items()}
    run_at_k = {q: {p: float(len(r) - i) for i, p in enumerate(r[:k])} for q, r in rankings.items()}
    full = pytrec_eval.RelevanceEvaluator(qrels, {f"recall.{k}", f"ndcg_cut.{k}"}).evaluate(run)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run_at_k)
    counted = [q for q, judged in qrels.items() if any(g >= 1 for g in judged.values())]

    def mean(results, measure):
        return sum(results[q][measure] if q in results else 0.0 for q in counted) / len(counted)

    return {
        f"recall@{k}": mean(full, f"recall_{k}"),
        f"ndcg@{k}": mean(full, f"ndcg_cut_{k}"),
        f"mrr@{k}": mean(cut, "recip_rank"),
    }


def _graded_random_case(seed):
    """40 queries judged on grades 0-3: some with no passage of grade >= 1, some that the run
    lacks, some ranked with an empty list, and run queries that have no judgements at all."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(60)]
    qrels, rankings = {}, {}
    for q in range(40):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 8))
        if q % 7 == 0:
            qrels[qid] = dict.fromkeys(judged, 0)  # judged, none relevant
        else:
            qrels[qid] = {d: rng.choice([0, 1, 2, 3]) for d in judged}
            qrels[qid][judged[0]] = rng.choice([1, 2, 3])  # at least one relevant
        if q % 5 == 1:
            continue  # missing from the run
        if q % 11 == 2:
            rankings[qid] = []
        else:
            # biased towards the judged passages, so that cutoffs and grades matter
            pool = judged + rng.sample(docs, 20)
            rankings[qid] = list(dict.fromkeys(rng.sample(pool, rng.randint(1, len(pool)))))
    for extra in range(5):
        rankings[f"unjudged{extra}"] = rng.sample(docs, 10)
    return qrels, rankings


@pytest.mark.parametrize("seed", range(30))
def test_graded_qrels_with_unjudged_unranked_and_irrelevant_queries_agree_with_pytrec_eval(
    seed,
):
    """Graded relevance (0-3), queries without a relevant passage (all grade 0, or ranked but
    not judged), queries missing from the run: evaluate agrees with pytrec_eval's per-query
    values averaged over the queries that have a relevant passage (unranked ones scoring 0)."""
    qrels, rankings = _graded_random_case(seed)
    relevant = {q for q, judged in qrels.items() if max(judged.values()) >= 1}
    assert set(qrels) - relevant and relevant - set(rankings)  # the case has both kinds
    for k in (1, 2, 5, 10, 100):
        names = [f"recall@{k}", f"mrr@{k}", f"ndcg@{k}"]
        result = evaluate(rankings, qrels, names)
        reference = _pytrec_by_convention(rankings, qrels, k)
        for name, value in reference.items():
            assert result.metrics[name] == pytest.approx(value, abs=1e-12), (name, seed)
        assert result.evaluated_queries == len(relevant)
        assert set(result.qids) == relevant


def test_the_plots_recall_curve_is_recall_at_every_k():
    """report.png's curve, computed in one pass, against recall@k evaluated at each k."""
    import random

    from rerank_ray.metrics import Hits, Judgements, evaluate, recall_curve

    rng = random.Random(5)
    pids = [f"p{i}" for i in range(40)]
    qrels = {f"q{i}": {p: rng.choice([0, 1, 2]) for p in rng.sample(pids, 5)} for i in range(30)}
    qrels["q_none"] = {"p1": 0}  # no relevant passage: not averaged
    rankings = {q: rng.sample(pids, 25) for q in list(qrels)[:-3]}  # some queries unranked
    curve = recall_curve(Hits.from_rankings(rankings, Judgements.from_dict(qrels)), 25)
    for k in (1, 2, 7, 25):
        assert curve[k - 1] == pytest.approx(
            evaluate(rankings, qrels, [f"recall@{k}"]).metrics[f"recall@{k}"]
        )


def test_precision_and_average_precision_equal_pytrec_eval_and_ir_measures_names_parse():
    """P@k and AP@k (trec_eval's P_k and map_cut_k) on random graded rankings, queries
    without relevant passages and unranked queries included; ir_measures' names map to ours."""
    import random

    from rerank_ray.metrics import evaluate, parse_metrics

    rng = random.Random(8)
    pids = [f"p{i}" for i in range(50)]
    qrels = {f"q{i}": {p: rng.choice([0, 1, 2]) for p in rng.sample(pids, 6)} for i in range(40)}
    qrels["q_none"] = {"p3": 0}
    run = {
        q: {p: float(100 - r) for r, p in enumerate(rng.sample(pids, 30))} for q in list(qrels)[:-4]
    }
    rankings = {q: sorted(docs, key=lambda p: -docs[p]) for q, docs in run.items()}
    names = parse_metrics("P@5, AP@20 P@40 AP@100")
    assert names == ("p@5", "map@20", "p@40", "map@100")
    got = evaluate(rankings, qrels, names).metrics
    judged = {q: j for q, j in qrels.items() if any(v >= 1 for v in j.values())}
    full = pytrec_eval.RelevanceEvaluator(judged, {"P.5,40", "map_cut.20,100"}).evaluate(run)
    for name, key in (
        ("p@5", "P_5"),
        ("p@40", "P_40"),
        ("map@20", "map_cut_20"),
        ("map@100", "map_cut_100"),
    ):
        expected = sum(full[q][key] if q in full else 0.0 for q in judged) / len(judged)
        assert got[name] == pytest.approx(expected, abs=1e-12), name
    judged_names = parse_metrics("Judged@5 Judged@40")
    got = evaluate(rankings, qrels, judged_names).metrics
    every_judgement = {q: {p: 1 for p in j} for q, j in judged.items()}  # P@k, all judged relevant
    full = pytrec_eval.RelevanceEvaluator(every_judgement, {"P.5,40"}).evaluate(run)
    for name, key in (("judged@5", "P_5"), ("judged@40", "P_40")):
        expected = sum(full[q][key] if q in full else 0.0 for q in judged) / len(judged)
        assert got[name] == pytest.approx(expected, abs=1e-12), name
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("MAP@10 Bpref@10")


def test_evaluate_run_refuses_what_no_figure_can_mean_before_writing_anything(tmp_path):
    """Qrels without a relevant passage (every mean would be 0 over no query) and metrics all
    deeper than the rankings (an empty table) are refused, and nothing is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rerank_ray.errors import ConfigError, DataError
    from rerank_ray.evaluation import evaluate_run
    from rerank_ray.rundir import RunDirectory

    retrieval = pa.table({"qid": ["q1", "q2"], "pid": ["a", "b"], "rank": [1, 1]})
    pq.write_table(retrieval, tmp_path / "retrieval.parquet")
    qrels = pa.table(
        {"qid": ["q1", "q2"], "pid": ["a", "b"], "relevance": pa.array([0, -1], pa.int32())}
    )
    pq.write_table(qrels, tmp_path / "qrels.parquet")
    out = RunDirectory(tmp_path / "run")

    def evaluate(qrels_path, metrics):
        return evaluate_run(
            str(tmp_path / "retrieval.parquet"), {}, str(qrels_path), 20, out, metrics=metrics
        )

    with pytest.raises(DataError) as error:
        evaluate(tmp_path / "qrels.parquet", ("recall@10",))
    assert str(error.value) == (
        f"{tmp_path / 'qrels.parquet'}: no query has a relevant passage (grade > 0)"
    )
    pq.write_table(qrels.set_column(2, "relevance", pa.array([1, 0], pa.int32())),
                   tmp_path / "judged.parquet")  # fmt: skip
    with pytest.raises(ConfigError) as error:
        evaluate(tmp_path / "judged.parquet", ("recall@1000", "ndcg@100"))
    assert str(error.value) == (
        "no requested metric can be reported at depth 20: recall@1000 needs 1000, ndcg@100"
        " needs 100 (the rankings hold the top 20 passages per query)"
    )
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    metrics, stats = evaluate(tmp_path / "judged.parquet", ("recall@1000", "recall@1"))
    assert metrics == {"retrieval": {"recall@1": 1.0}} and stats["not_reported"] == ["recall@1000"]
