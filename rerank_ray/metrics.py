"""Retrieval metrics, computed from where each ranking put the judged passages.

Only the judged passages of a ranking decide its metrics, so a ranking is reduced to its
*hits* (:class:`Hits`): for each judged (query, passage) pair it ranked, the query, the rank
and the grade. Every metric is then a few vectorized reductions over the hits, one function per
metric, whatever the depth of the rankings (7 million retrieved rows give a few thousand hits).

A passage is relevant when its grade is at least 1 (trec_eval's ``relevance_level``). Averages
run over the queries that have at least one relevant passage (:class:`Judgements`); a query
without any is excluded and counted, and a query that has relevant passages but no ranking
scores 0. Each function returns one value per such query, in :attr:`Judgements.qids` order;
the tests check every one against pytrec_eval.

Example:
    >>> qrels = {"q1": {"a": 1}, "q2": {"b": 2, "c": 1}}
    >>> rankings = {"q1": ["x", "a"], "q2": ["b", "y", "c"]}
    >>> evaluate(rankings, qrels, ["recall@1", "mrr@10"]).metrics
    {'recall@1': 0.25, 'mrr@10': 0.75}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.errors import ConfigError

#: The metrics every report shows, in this order.
DEFAULT_METRICS = (
    "recall@1", "recall@10", "recall@100", "mrr@1", "mrr@10", "ndcg@10", "map@100",
)  # fmt: skip

QRELS_COLUMNS = ("qid", "pid", "relevance")


@dataclass(frozen=True)
class Judgements:
    """The qrels of the queries that have a relevant passage (the queries metrics average over).

    Attributes:
        qids: Those queries' ids, sorted; every per-query array is in this order.
        table: Their judgements, ``qid, pid, relevance`` (grade 0 and negative ones included).
        num_relevant: Per query, its passages of grade >= 1.
        ideal: ``(query, position, gain)`` of each positive grade, sorted by decreasing grade
            within its query (position from 0): the ideal ranking nDCG divides by.
    """

    qids: np.ndarray
    table: pa.Table
    num_relevant: np.ndarray
    ideal: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def from_table(cls, qrels: pa.Table) -> Judgements:
        """From a ``qid, pid, relevance`` table (one row per judged pair)."""
        qrels = qrels.select(list(QRELS_COLUMNS))
        grades = qrels.column("relevance").to_numpy(zero_copy_only=False).astype(np.int64)
        relevant_qids = pc.unique(qrels.column("qid").filter(pa.array(grades >= 1)))
        qids = relevant_qids.take(pc.sort_indices(relevant_qids))
        kept = pc.is_in(qrels.column("qid"), value_set=qids)
        table = qrels.filter(kept)
        grades = grades[kept.to_numpy(zero_copy_only=False)]
        query = pc.index_in(table.column("qid"), value_set=qids).to_numpy(zero_copy_only=False)
        num_relevant = np.bincount(query[grades >= 1], minlength=len(qids))
        positive = grades > 0
        order = np.lexsort((-grades[positive], query[positive]))
        ideal_query, ideal_gain = query[positive][order], grades[positive][order]
        return cls(
            qids=np.asarray(qids.to_pylist(), dtype=object),
            table=table,
            num_relevant=num_relevant,
            ideal=(ideal_query, _positions(ideal_query), ideal_gain),
        )

    @classmethod
    def from_dict(cls, qrels: Mapping[str, Mapping[str, int]]) -> Judgements:
        """From ``{qid: {pid: relevance}}``."""
        rows = [(q, p, int(g)) for q, judged in qrels.items() for p, g in judged.items()]
        columns = list(zip(*rows)) if rows else [[], [], []]
        return cls.from_table(
            pa.table(
                {
                    "qid": pa.array(columns[0], pa.string()),
                    "pid": pa.array(columns[1], pa.string()),
                    "relevance": pa.array(columns[2], pa.int64()),
                }
            )
        )

    @property
    def qid_array(self) -> pa.Array:
        return pa.array(self.qids, type=pa.string())

    def ideal_dcg(self, k: int) -> np.ndarray:
        """Per query, the DCG@k of its judged grades sorted in decreasing order."""
        query, position, gain = self.ideal
        top = position < k
        weights = gain[top] / np.log2(position[top] + 2.0)
        return np.bincount(query[top], weights=weights, minlength=len(self.qids))

    def count_unjudged(self, ranked_qids: pa.Array) -> int:
        """How many of the distinct ``ranked_qids`` have no relevant passage (not averaged)."""
        ranked = pc.unique(ranked_qids)
        return len(ranked) - int(pc.sum(pc.is_in(ranked, value_set=self.qid_array)).as_py() or 0)


def _positions(query: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal ``query`` values."""
    if not len(query):
        return np.zeros(0, np.int64)
    index = np.arange(len(query))
    starts = np.r_[True, query[1:] != query[:-1]]
    return index - np.maximum.accumulate(np.where(starts, index, 0))


@dataclass(frozen=True)
class Hits:
    """The judged passages a ranking placed: per hit, its query (an index into
    :attr:`Judgements.qids`), its 1-based rank and its grade, ordered by query then rank.

    Example:
        >>> judgements = Judgements.from_dict({"q": {"a": 1, "b": 0}})
        >>> hits = Hits.from_rankings({"q": ["x", "b", "a"]}, judgements)
        >>> hits.rank.tolist(), hits.grade.tolist()
        ([2, 3], [0, 1])
    """

    judgements: Judgements
    query: np.ndarray
    rank: np.ndarray
    grade: np.ndarray

    @classmethod
    def from_table(cls, ranking: pa.Table, judgements: Judgements) -> Hits:
        """From a ``qid, pid, rank`` table (one row per ranked pair; other columns ignored)."""
        joined = ranking.select(["qid", "pid", "rank"]).join(
            judgements.table, keys=["qid", "pid"], join_type="inner"
        )
        query = pc.index_in(joined.column("qid"), value_set=judgements.qid_array)
        query = query.to_numpy(zero_copy_only=False).astype(np.int64)
        rank = joined.column("rank").to_numpy(zero_copy_only=False).astype(np.int64)
        grade = joined.column("relevance").to_numpy(zero_copy_only=False).astype(np.int64)
        order = np.lexsort((rank, query))
        return cls(judgements, query[order], rank[order], grade[order])

    @classmethod
    def from_rankings(cls, rankings: Mapping[str, Sequence[str]], judgements: Judgements) -> Hits:
        """From ``{qid: [pid, ...]}``, best first."""
        rows = [(q, p, r) for q, ranking in rankings.items() for r, p in enumerate(ranking, 1)]
        columns = list(zip(*rows)) if rows else [[], [], []]
        table = pa.table(
            {
                "qid": pa.array(columns[0], pa.string()),
                "pid": pa.array(columns[1], pa.string()),
                "rank": pa.array(columns[2], pa.int64()),
            }
        )
        return cls.from_table(table, judgements)

    @classmethod
    def concat(cls, parts: Sequence[Hits]) -> Hits:
        """The hits of one ranking given in parts (disjoint pairs), reordered by query, rank."""
        query = np.concatenate([p.query for p in parts])
        rank = np.concatenate([p.rank for p in parts])
        grade = np.concatenate([p.grade for p in parts])
        order = np.lexsort((rank, query))
        return cls(parts[0].judgements, query[order], rank[order], grade[order])

    @property
    def num_queries(self) -> int:
        return len(self.judgements.qids)

    def count(self, selected: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Per query, the number of the ``selected`` hits, or the sum of their ``weights``
        (one per selected hit)."""
        counts = np.bincount(self.query[selected], weights=weights, minlength=self.num_queries)
        return counts.astype(np.float64)

    def first_relevant_rank(self, k: int | None = None) -> np.ndarray:
        """Per query, the rank of its first relevant passage within the top ``k`` (any rank
        for ``None``); 0 where there is none."""
        selected = (self.grade >= 1) & (self.rank <= (k or np.iinfo(np.int64).max))
        first = np.zeros(self.num_queries, np.int64)
        query, rank = self.query[selected], self.rank[selected]
        starts = np.r_[True, query[1:] != query[:-1]] if len(query) else np.zeros(0, bool)
        first[query[starts]] = rank[starts]  # hits are ordered by query, then rank
        return first


def recall_at_k(hits: Hits, k: int) -> np.ndarray:
    """Fraction of the relevant passages found in the top ``k``.

    recall@k = |relevant ∩ top-k| / |relevant|

    Example:
        >>> per_query({"q": ["a", "b", "c"]}, {"q": {"a": 1, "c": 1, "d": 1, "e": 0}}, recall_at_k, 2)
        [0.3333333333333333]
    """
    found = hits.count((hits.grade >= 1) & (hits.rank <= k))
    return found / hits.judgements.num_relevant


def reciprocal_rank_at_k(hits: Hits, k: int) -> np.ndarray:
    """1 / rank of the first relevant passage within the top ``k``, else 0. MRR@k is its mean.

    RR@k = 1 / min{ rank(p) : p relevant, rank(p) <= k }   (0 if no such p)

    Example:
        >>> per_query({"q": ["x", "y", "a"]}, {"q": {"a": 1}}, reciprocal_rank_at_k, 10)
        [0.3333333333333333]
        >>> per_query({"q": ["x", "y", "a"]}, {"q": {"a": 1}}, reciprocal_rank_at_k, 2)
        [0.0]
    """
    first = hits.first_relevant_rank(k).astype(np.float64)
    return np.divide(1.0, first, out=np.zeros_like(first), where=first > 0)


def ndcg_at_k(hits: Hits, k: int) -> np.ndarray:
    """Normalized discounted cumulative gain at ``k`` with graded gains, as trec_eval computes it.

    DCG@k = Σ_{i=1..k} rel(p_i) / log2(i + 1), with rel the judged relevance (0 if unjudged
    or negative); nDCG@k = DCG@k / IDCG@k, where IDCG@k is the DCG of the judged relevances
    sorted in decreasing order.

    Example:
        >>> per_query({"q": ["b", "a"]}, {"q": {"a": 2, "b": 1}}, ndcg_at_k, 2)  # (1 + 2/log2 3) / (2 + 1/log2 3)
        [0.8597186998521972]
    """
    top = hits.rank <= k
    gains = np.maximum(hits.grade[top], 0) / np.log2(hits.rank[top] + 1.0)
    return hits.count(top, gains) / hits.judgements.ideal_dcg(k)


def precision_at_k(hits: Hits, k: int) -> np.ndarray:
    """Fraction of the top ``k`` that is relevant, over ``k`` even when fewer were ranked
    (trec_eval's ``P_k``).

    P@k = |relevant ∩ top-k| / k

    Example:
        >>> per_query({"q": ["a", "x", "b"]}, {"q": {"a": 1, "b": 2}}, precision_at_k, 4)
        [0.5]
    """
    return hits.count((hits.grade >= 1) & (hits.rank <= k)) / k


def average_precision_at_k(hits: Hits, k: int) -> np.ndarray:
    """Mean of the precision at each relevant passage's rank within the top ``k``, over all
    the query's relevant passages (trec_eval's ``map_cut_k``).

    AP@k = (1 / |relevant|) Σ_{i <= k, p_i relevant} P@i

    Example:
        >>> per_query({"q": ["a", "x", "b"]}, {"q": {"a": 1, "b": 1, "c": 1}}, average_precision_at_k, 3)
        [0.5555555555555555]
    """
    selected = (hits.grade >= 1) & (hits.rank <= k)
    query, rank = hits.query[selected], hits.rank[selected]
    precision = (_positions(query) + 1) / rank  # hits are ordered by query, then rank
    return hits.count(selected, precision) / hits.judgements.num_relevant


def judged_at_k(hits: Hits, k: int) -> np.ndarray:
    """Fraction of the top ``k`` that is judged at all, any grade (ir_measures' ``Judged@k``:
    P@k with every judgement counted relevant), over ``k``.

    Judged@k = |judged ∩ top-k| / k

    Example:
        >>> per_query({"q": ["a", "x", "b", "y"]}, {"q": {"a": 1, "b": 0}}, judged_at_k, 4)
        [0.5]
    """
    return hits.count(hits.rank <= k) / k


def recall_curve(hits: Hits, depth: int) -> list[float]:
    """Mean recall@k for k = 1..``depth`` (each relevant passage found at rank r adds
    1/|relevant| to every k >= r).

    Example:
        >>> judgements = Judgements.from_dict({"q": {"a": 1, "b": 1}})
        >>> recall_curve(Hits.from_rankings({"q": ["a", "x", "b"]}, judgements), 3)
        [0.5, 0.5, 1.0]
    """
    found = (hits.grade >= 1) & (hits.rank <= depth)
    weights = 1.0 / hits.judgements.num_relevant[hits.query[found]]
    curve = np.cumsum(np.bincount(hits.rank[found], weights=weights, minlength=depth + 1))[1:]
    return (curve / max(hits.num_queries, 1)).tolist()


def per_query(rankings, qrels, metric, k: int) -> list[float]:
    """One metric's per-query values of ``{qid: [pid, ...]}`` against ``{qid: {pid: grade}}``
    (for examples and small checks; the pipeline builds :class:`Hits` from its tables)."""
    judgements = Judgements.from_dict(qrels)
    return metric(Hits.from_rankings(rankings, judgements), k).tolist()


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


def reportable_metrics(names: Sequence[str], depth: int) -> tuple[list[str], list[str]]:
    """:func:`within_depth`, refusing a request of which no metric can be reported.

    Raises:
        ConfigError: when every cutoff is deeper than ``depth``, naming each metric's.

    Example:
        >>> reportable_metrics(["recall@1000"], 20)
        Traceback (most recent call last):
        ...
        rerank_ray.errors.ConfigError: no requested metric can be reported at depth 20: recall@1000 needs 1000 (the rankings hold the top 20 passages per query)
    """
    kept, deeper = within_depth(names, depth)
    if not kept:
        needs = ", ".join(f"{name} needs {parse_metric(name)[1]}" for name in deeper)
        raise ConfigError(
            f"no requested metric can be reported at depth {depth}: {needs} (the rankings"
            f" hold the top {depth} passages per query)"
        )
    return kept, deeper


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
    """Averaged metrics, the per-query values they average, and which queries those are.

    Attributes:
        metrics: ``{metric: mean}``.
        qids: The queries averaged over (those with a relevant passage), sorted.
        per_query: ``{metric: values}``, one value per query of ``qids``.
        evaluated_queries: ``len(qids)``.
        queries_without_relevant: Ranked queries without a relevant passage (not averaged).
    """

    metrics: dict[str, float]
    qids: np.ndarray
    per_query: dict[str, np.ndarray]
    evaluated_queries: int
    queries_without_relevant: int

    def to_dict(self) -> dict:
        return {
            **self.metrics,
            "evaluated_queries": self.evaluated_queries,
            "queries_without_relevant": self.queries_without_relevant,
        }


def evaluate_hits(hits: Hits, metrics: Sequence[str], unjudged_queries: int = 0) -> Evaluation:
    """Each metric per query and averaged, from a ranking's :class:`Hits`."""
    values = {}
    for name in metrics:
        base, k = parse_metric(name)
        values[name] = METRIC_FUNCTIONS[base](hits, k)
    count = hits.num_queries
    return Evaluation(
        metrics={n: float(v.sum() / count) if count else 0.0 for n, v in values.items()},
        qids=hits.judgements.qids,
        per_query=values,
        evaluated_queries=count,
        queries_without_relevant=unjudged_queries,
    )


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
    judgements = Judgements.from_dict(qrels)
    hits = Hits.from_rankings(rankings, judgements)
    unjudged = len(set(rankings) - set(judgements.qids.tolist()))
    return evaluate_hits(hits, metrics, unjudged)
