"""Retrieval metrics: one function per metric, checked against pytrec_eval in the tests.

A *ranking* is a list of pids, best first; *qrels* map a pid to its graded relevance. A pid
is relevant when its relevance is at least 1 (trec_eval's ``relevance_level``). Averages run
over the queries that have at least one relevant passage; a query without any is excluded and
counted (:class:`Evaluation`), and a query that has relevant passages but no ranking scores 0.

Example:
    >>> qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1}}
    >>> rankings = {"q1": ["x", "a"], "q2": ["b", "y", "c"]}
    >>> evaluate(rankings, qrels, ["recall@1", "mrr@10"]).metrics
    {'recall@1': 0.25, 'mrr@10': 0.75}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The metrics every report shows, in this order.
DEFAULT_METRICS = ("recall@1", "recall@10", "recall@100", "mrr@1", "mrr@10", "ndcg@10")


def _relevant(qrels: Mapping[str, int]) -> set[str]:
    return {pid for pid, relevance in qrels.items() if relevance >= 1}


def recall_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Fraction of the relevant passages found in the top ``k``.

    recall@k = |relevant ∩ top-k| / |relevant|

    Example:
        >>> recall_at_k(["a", "b", "c"], {"a": 1, "c": 1, "d": 1, "e": 0}, k=2)
        0.3333333333333333
    """
    relevant = _relevant(qrels)
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def reciprocal_rank_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant passage within the top ``k``, else 0. MRR@k is its mean.

    RR@k = 1 / min{ rank(p) : p relevant, rank(p) <= k }   (0 if no such p)

    Example:
        >>> reciprocal_rank_at_k(["x", "y", "a"], {"a": 1}, k=10)
        0.3333333333333333
        >>> reciprocal_rank_at_k(["x", "y", "a"], {"a": 1}, k=2)
        0.0
    """
    relevant = _relevant(qrels)
    for rank, pid in enumerate(ranking[:k], start=1):
        if pid in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Normalized discounted cumulative gain at ``k`` with graded gains, as trec_eval computes it.

    DCG@k = Σ_{i=1..k} rel(p_i) / log2(i + 1), with rel the judged relevance (0 if unjudged
    or negative); nDCG@k = DCG@k / IDCG@k, where IDCG@k is the DCG of the judged relevances
    sorted in decreasing order.

    Example:
        >>> round(ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, k=2), 6)  # (1 + 2/log2 3) / (2 + 1/log2 3)
        0.859719
    """
    gains = [max(0, qrels.get(pid, 0)) for pid in ranking[:k]]
    dcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(gains))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(i + 2) for i, gain in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def precision_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Fraction of the top ``k`` that is relevant, over ``k`` even when fewer were ranked
    (trec_eval's ``P_k``).

    P@k = |relevant ∩ top-k| / k

    Example:
        >>> precision_at_k(["a", "x", "b"], {"a": 1, "b": 2}, k=4)
        0.5
    """
    relevant = _relevant(qrels)
    return len(relevant.intersection(ranking[:k])) / k


def average_precision_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Mean of the precision at each relevant passage's rank within the top ``k``, over all
    the query's relevant passages (trec_eval's ``map_cut_k``).

    AP@k = (1 / |relevant|) Σ_{i <= k, p_i relevant} P@i

    Example:
        >>> average_precision_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, k=3)  # (1 + 2/3) / 3
        0.5555555555555555
    """
    relevant = _relevant(qrels)
    if not relevant:
        return 0.0
    found, total = 0, 0.0
    for rank, pid in enumerate(ranking[:k], start=1):
        if pid in relevant:
            found += 1
            total += found / rank
    return total / len(relevant)


def judged_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Fraction of the top ``k`` that is judged at all, any grade (ir_measures' ``Judged@k``:
    P@k with every judgement counted relevant), over ``k``.

    Judged@k = |judged ∩ top-k| / k

    Example:
        >>> judged_at_k(["a", "x", "b", "y"], {"a": 1, "b": 0}, k=4)
        0.5
    """
    return len(set(qrels).intersection(ranking[:k])) / k


METRIC_FUNCTIONS = {
    "recall": recall_at_k,
    "mrr": reciprocal_rank_at_k,
    "ndcg": ndcg_at_k,
    "p": precision_at_k,
    "map": average_precision_at_k,
    "judged": judged_at_k,
}
#: ir_measures' (and trec_eval's) names of the same measures.
MEASURE_NAMES = {
    "r": "recall",
    "rr": "mrr",
    "ndcg": "ndcg",
    "p": "p",
    "ap": "map",
    "judged": "judged",
}


def parse_metric(name: str) -> tuple[str, int]:
    """Split ``"recall@10"`` into ``("recall", 10)``.

    Raises:
        ValueError: for an unknown metric or a cutoff that is not a positive integer.
    """
    base, _, cutoff = name.partition("@")
    if base not in METRIC_FUNCTIONS or not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(
            f"unknown metric {name!r} (use recall@k, mrr@k, ndcg@k, p@k, map@k, judged@k, or"
            " ir_measures' R@k, RR@k, nDCG@k, P@k, AP@k, Judged@k)"
        )
    return base, int(cutoff)


def parse_metrics(text: str) -> tuple[str, ...]:
    """A comma- or space-separated list of measures, in the project's names.

    Example:
        >>> parse_metrics("nDCG@10, RR@10 AP@100")
        ('ndcg@10', 'mrr@10', 'map@100')
    """
    return tuple(metric_name(n) for n in text.replace(",", " ").split())


def metric_name(name: str) -> str:
    """The project's name of a measure given in its own or ir_measures' spelling.

    Example:
        >>> [metric_name(n) for n in ["nDCG@10", "RR@10", "R@100", "AP@1000", "P@10", "mrr@10"]]
        ['ndcg@10', 'mrr@10', 'recall@100', 'map@1000', 'p@10', 'mrr@10']
    """
    base, at, cutoff = name.strip().partition("@")
    base = MEASURE_NAMES.get(base.lower(), base.lower())
    parse_metric(f"{base}{at}{cutoff}")
    return f"{base}{at}{cutoff}"


def within_depth(names: Sequence[str], depth: int) -> tuple[list[str], list[str]]:
    """Split metric names into those a ranking of ``depth`` passages per query can measure
    and those it cannot (a cutoff deeper than the ranking would report the top ``depth``
    under a deeper name).

    Example:
        >>> within_depth(["recall@10", "recall@100", "mrr@10"], 20)
        (['recall@10', 'mrr@10'], ['recall@100'])
    """
    kept = [name for name in names if parse_metric(name)[1] <= depth]
    return kept, [name for name in names if name not in kept]


def depth_note(dropped: Sequence[str], depth: int) -> str:
    """The sentence saying which metrics are not reported and why ('' when none).

    Example:
        >>> depth_note(["recall@100"], 20)
        'recall@100 not reported: only the top 20 passages were retrieved per query.'
    """
    if not dropped:
        return ""
    return (
        f"{', '.join(dropped)} not reported: only the top {depth} passages were retrieved"
        " per query."
    )


@dataclass(frozen=True)
class Evaluation:
    """Averaged metrics, and which queries they were averaged over."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    evaluated_queries: int
    queries_without_relevant: int

    def to_dict(self) -> dict:
        return {
            **self.metrics,
            "evaluated_queries": self.evaluated_queries,
            "queries_without_relevant": self.queries_without_relevant,
        }


def evaluate(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> Evaluation:
    """Average each metric over the queries of ``qrels`` that have a relevant passage.

    Args:
        rankings: ``{qid: [pid, ...]}``, best first.
        qrels: ``{qid: {pid: relevance}}``.
        metrics: Names such as ``recall@10``, ``mrr@10``, ``ndcg@10``.
    """
    parsed = [(name, *parse_metric(name)) for name in metrics]
    judged = [qid for qid, judgements in qrels.items() if _relevant(judgements)]
    per_query = {
        qid: {
            name: METRIC_FUNCTIONS[base](rankings.get(qid, []), qrels[qid], k)
            for name, base, k in parsed
        }
        for qid in judged
    }
    averages = {
        name: (sum(scores[name] for scores in per_query.values()) / len(per_query))
        if per_query
        else 0.0
        for name, _, _ in parsed
    }
    return Evaluation(
        metrics=averages,
        per_query=per_query,
        evaluated_queries=len(judged),
        queries_without_relevant=len(set(rankings) - set(judged)),
    )
