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
    recall_at_k,
    reciprocal_rank_at_k,
)


def test_recall_hand_computed():
    qrels = {"a": 1, "b": 2, "c": 0}  # c is judged but not relevant
    assert recall_at_k(["x", "a", "c"], qrels, 1) == 0.0
    assert recall_at_k(["x", "a", "c"], qrels, 2) == 0.5
    assert recall_at_k(["b", "a"], qrels, 2) == 1.0
    assert recall_at_k([], qrels, 10) == 0.0


def test_reciprocal_rank_hand_computed():
    qrels = {"a": 1, "b": 1}
    assert reciprocal_rank_at_k(["x", "y", "b", "a"], qrels, 10) == pytest.approx(1 / 3)
    assert reciprocal_rank_at_k(["x", "y", "b", "a"], qrels, 2) == 0.0
    assert reciprocal_rank_at_k(["a"], qrels, 1) == 1.0
    assert reciprocal_rank_at_k(["x", "c"], {"c": 0}, 10) == 0.0


def test_ndcg_hand_computed():
    # ranking [b (rel 1), x, a (rel 2)]; ideal [a, b]
    dcg = 1 / math.log2(2) + 0 + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(["b", "x", "a"], {"a": 2, "b": 1}, 3) == pytest.approx(dcg / idcg)
    # the cutoff drops a from the ranking and b from the ideal
    assert ndcg_at_k(["b", "x", "a"], {"a": 2, "b": 1}, 1) == pytest.approx(1 / 2)
    assert ndcg_at_k(["a", "b"], {"a": 2, "b": 1}, 10) == pytest.approx(1.0)


def test_evaluate_excludes_queries_without_relevant_and_scores_missing_rankings_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {"c": 1}}
    rankings = {"q1": ["a"], "q2": ["b"], "q4": ["z"]}  # q3 has no ranking
    result = evaluate(rankings, qrels, ["recall@1", "mrr@10"])
    assert result.metrics == {"recall@1": 0.5, "mrr@10": 0.5}
    assert result.evaluated_queries == 2
    assert result.queries_without_relevant == 2  # q2 (judged, none relevant) and q4 (unjudged)


def test_parse_metric_rejects_unknown_names():
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    for bad in ("map@10", "recall", "recall@0", "recall@x"):
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
