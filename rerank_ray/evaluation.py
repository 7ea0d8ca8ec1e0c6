"""The evaluate stage: each system's rankings against the qrels, from the run's columns.

The systems are the retrieval (``retrieval.parquet``) and each reranker
(``rerank/<system>.parquet``, whose reranked top is followed by the rest of the retrieval
order). Each is reduced to its judged hits (:class:`rerank_ray.metrics.Hits`: one Arrow join
with the qrels), so the stage's cost is reading the rankings once, whatever their depth;
metrics deeper than the retrieval depth are not computed (:func:`rerank_ray.metrics.within_depth`)
and a request of only such metrics is refused, as are qrels without a relevant passage.
Writes ``metrics.json`` (``{system: {metric: mean}}``), ``per_query.parquet`` (``system, qid,
metric, value``: the values the means and the tests are computed from), ``significance.json``
(each system against the baseline, :mod:`rerank_ray.significance`) and ``report.png``.

Example::

    from rerank_ray.evaluation import evaluate_run
    metrics, stats = evaluate_run("RUN/retrieval.parquet", {}, "RUN/data/qrels.parquet",
                                  top_k=100, out=RunDirectory("RUN"))
    metrics["retrieval"]["recall@10"]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.errors import DataError
from rerank_ray.io import write_json
from rerank_ray.metrics import (
    DEFAULT_METRICS,
    Evaluation,
    Hits,
    Judgements,
    evaluate_hits,
    recall_curve,
    reportable_metrics,
)
from rerank_ray.parquet import read_table, write_table
from rerank_ray.report import write_plot
from rerank_ray.significance import ALPHA, RESAMPLES, SEED, compare_systems


def evaluate_run(
    retrieval_path: str,
    rerank_paths: dict[str, str],
    qrels_path: str,
    top_k: int,
    out,
    notes: dict[str, str] | None = None,
    depths: tuple[int, ...] | None = None,
    rerank_costs: dict[str, dict] | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    queries_path: str | None = None,
    baseline: str = "retrieval",
) -> tuple[dict, dict]:
    """Metrics of the retrieval and of each reranker's rankings.

    Args:
        retrieval_path: ``retrieval.parquet``.
        rerank_paths: ``{system: rerank/<system>.parquet}``, in report order.
        qrels_path: The normalized qrels table.
        top_k: The retrieval depth (deeper metrics are not computed).
        out: The :class:`~rerank_ray.rundir.RunDirectory` the outputs go to.
        notes: ``{system: note}`` shown on the plot (e.g. that a reranker is a smoke model).
        depths: Also each reranker's metrics had it reranked only the top ``d`` of each query
            (:func:`depth_sweep`); ``rerank_costs``: ``{system: cost}`` of :func:`rerank_cost`.
        metrics: The measures, in the project's names.
        queries_path: The queries table (texts of the most changed queries).
        baseline: The system the others are tested against.

    Returns:
        The metrics, and the stage's statistics: queries evaluated, queries without a
        relevant passage, metrics not reported for depth, each reranker's effect per query
        and depth sweep, and ``significance`` (``significance.json``'s content).

    Raises:
        ConfigError: when no metric's cutoff is within ``top_k``
            (:func:`~rerank_ray.metrics.reportable_metrics`).
        DataError: when no query of the qrels has a relevant passage; both before anything
            is written.
    """
    names, deeper = reportable_metrics(metrics, top_k)
    judgements = Judgements.from_table(read_table(qrels_path))
    if not len(judgements.qids):  # every metric would average over no query
        raise DataError(f"{qrels_path}: no query has a relevant passage (grade > 0)")
    retrieval = read_table(retrieval_path, columns=["qid", "pid", "rank"])
    unjudged = judgements.count_unjudged(retrieval.column("qid"))
    hits = {"retrieval": Hits.from_table(retrieval, judgements)}
    del retrieval
    reranked = {
        system: RerankedTable.read(path, judgements) for system, path in rerank_paths.items()
    }
    for system, table in reranked.items():
        hits[system] = table.hits(hits["retrieval"])
    evaluations = {system: evaluate_hits(h, names, unjudged) for system, h in hits.items()}
    stats: dict = {
        "evaluated_queries": len(judgements.qids),
        "queries_without_relevant": unjudged,
    }
    if deeper:
        stats["not_reported"] = deeper  # deeper than the rankings
    if reranked:
        first = {system: h.first_relevant_rank() for system, h in hits.items()}
        stats["rerank_effect"], stats["most_changed"] = {}, {}
        for system in reranked:
            effect, changed = rank_changes(judgements.qids, first["retrieval"], first[system])
            stats["rerank_effect"][system] = effect
            stats["most_changed"][system] = changed
        _add_texts(stats["most_changed"], queries_path)
    sweeps = {}
    if depths:
        for system, table in reranked.items():
            cost = (rerank_costs or {}).get(system, {})
            sweeps[system] = depth_sweep(table, hits["retrieval"], names, depths, cost)
        if sweeps:
            stats["depth_sweep"] = sweeps
    result = {system: e.metrics for system, e in evaluations.items()}
    per_query = {system: _as_dict(e) for system, e in evaluations.items()}
    comparisons = compare_systems(per_query, baseline, names)
    write_json(out.metrics_path, result)
    write_table(per_query_table(evaluations), out.per_query_path)
    significance = {
        "baseline": baseline,
        "alpha": ALPHA,
        "tests": "paired randomization (sign flips, two-sided), paired t-test, bootstrap"
        f" BCa 95% CI; {RESAMPLES} resamples, seed {SEED}; Holm across systems",
        "comparisons": [c.to_dict() for c in comparisons],
    }
    write_json(out.significance_path, significance)
    write_plot(
        out.plot_path,
        {system: recall_curve(h, top_k) for system, h in hits.items()},
        {system: table.score_split() for system, table in reranked.items()},
        notes=notes,
        sweeps=sweeps,
    )
    return result, {**stats, "significance": significance}


@dataclass(frozen=True)
class RerankedTable:
    """One reranker's ``rerank/<system>.parquet``, ordered by query and rank, with the grade
    of each judged row (the rows of queries without a relevant passage are dropped).

    A query's reranked rows are its retrieved passages of retrieval rank 1 to ``n`` (the
    rerank stage scores exactly those); its ranking is these rows in rerank order, then its
    retrieved passages of rank above ``n`` in retrieval order.

    Attributes:
        query, rank, retrieval_rank, score: Per row: the query's index in
            ``judgements.qids``, the rank the reranker gave, the retrieval's rank, the score.
        judged_rows, judged_grades: The rows that are judged pairs, and their grades.
    """

    query: np.ndarray
    rank: np.ndarray
    retrieval_rank: np.ndarray
    score: np.ndarray
    judged_rows: np.ndarray
    judged_grades: np.ndarray
    judgements: Judgements

    @classmethod
    def read(cls, path: str, judgements: Judgements) -> RerankedTable:
        table = read_table(path, columns=["qid", "pid", "rank", "retrieval_rank", "score"])
        query = pc.index_in(table.column("qid"), value_set=judgements.qid_array)
        table = table.append_column("query", query).filter(pc.is_valid(query))
        table = table.sort_by([("query", "ascending"), ("rank", "ascending")])
        table = table.append_column("row", pa.array(np.arange(table.num_rows)))
        judged = table.select(["qid", "pid", "row"]).join(
            judgements.table, keys=["qid", "pid"], join_type="inner"
        )

        def column(t, name):
            return t.column(name).to_numpy(zero_copy_only=False)

        return cls(
            query=column(table, "query").astype(np.int64),
            rank=column(table, "rank").astype(np.int64),
            retrieval_rank=column(table, "retrieval_rank").astype(np.int64),
            score=column(table, "score").astype(np.float64),
            judged_rows=column(judged, "row").astype(np.int64),
            judged_grades=column(judged, "relevance").astype(np.int64),
            judgements=judgements,
        )

    def hits(self, retrieved: Hits, depth: int | None = None) -> Hits:
        """The hits of this reranker's ranking (of reranking only the top ``depth``
        retrieved passages of each query, ranked among themselves in rerank order)."""
        rows, grades = self.judged_rows, self.judged_grades
        if depth is None:
            head_rank = self.rank
            reranked = np.bincount(self.query, minlength=len(self.judgements.qids))
            rest = retrieved.rank > reranked[retrieved.query]
        else:
            inside = self.retrieval_rank <= depth
            head_rank = _ranks_within_query(self.query, inside)
            keep = inside[rows]
            rows, grades = rows[keep], grades[keep]
            rest = retrieved.rank > depth
        head = Hits(self.judgements, self.query[rows], head_rank[rows], grades)
        tail = Hits(
            self.judgements, retrieved.query[rest], retrieved.rank[rest], retrieved.grade[rest]
        )
        return Hits.concat([head, tail])

    def score_split(self) -> tuple[np.ndarray, np.ndarray]:
        """The scores of the relevant pairs and of the others (judged queries' pairs)."""
        relevant = np.zeros(len(self.score), bool)
        relevant[self.judged_rows[self.judged_grades >= 1]] = True
        return self.score[relevant], self.score[~relevant]

    def pairs_within(self, depth: int) -> int:
        """How many of the scored pairs of the judged queries have retrieval rank <= depth."""
        return int(np.count_nonzero(self.retrieval_rank <= depth))


def _ranks_within_query(query: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """For rows ordered by query then rank, the 1-based position of each row among its
    query's rows that are ``inside`` (meaningful for those rows only)."""
    counted = np.cumsum(inside)
    starts = np.r_[True, query[1:] != query[:-1]] if len(query) else np.zeros(0, bool)
    before = np.where(starts, counted - inside, 0)
    return counted - np.maximum.accumulate(before)


def rank_changes(qids: np.ndarray, before: np.ndarray, after: np.ndarray, n: int = 10):
    """How many queries the second ranking improved, hurt or left unchanged, by the
    reciprocal rank of the first relevant passage over the whole ranking (``before`` and
    ``after``: per query, that rank, 0 for none), and the ``n`` most improved and most hurt
    (by that change, ties by qid) with their ranks.

    Example:
        >>> effect, changed = rank_changes(np.array(["a", "b"]), np.array([2, 1]), np.array([1, 1]))
        >>> effect, changed["improved"]
        ({'improved': 1, 'hurt': 0, 'unchanged': 1}, [{'qid': 'a', 'before': 2, 'after': 1}])
    """

    def reciprocal(rank):
        rank = rank.astype(np.float64)
        return np.divide(1.0, rank, out=np.zeros_like(rank), where=rank > 0)

    delta = reciprocal(after) - reciprocal(before)
    effect = {
        "improved": int(np.count_nonzero(delta > 0)),
        "hurt": int(np.count_nonzero(delta < 0)),
        "unchanged": int(np.count_nonzero(delta == 0)),
    }

    def rows(order):
        return [
            {
                "qid": str(qids[i]),
                "before": int(before[i]) or None,
                "after": int(after[i]) or None,
            }
            for i in order[:n]
        ]

    improved = [i for i in np.lexsort((qids, -delta)) if delta[i] > 0]
    hurt = [i for i in np.lexsort((qids, delta)) if delta[i] < 0]
    return effect, {"improved": rows(improved), "hurt": rows(hurt)}


def _add_texts(changed: dict, queries_path: str | None) -> None:
    """Put each listed query's text into the rows of :func:`rank_changes`."""
    listed = {row["qid"] for lists in changed.values() for rows in lists.values() for row in rows}
    texts = {}
    if queries_path and listed:
        table = read_table(queries_path, columns=["qid", "text"])
        table = table.filter(pc.is_in(table.column("qid"), value_set=pa.array(sorted(listed))))
        texts = dict(zip(table.column("qid").to_pylist(), table.column("text").to_pylist()))
    for lists in changed.values():
        for rows in lists.values():
            for row in rows:
                row["query"] = texts.get(row["qid"], "")


def _as_dict(evaluation: Evaluation) -> dict[str, dict[str, float]]:
    """``{qid: {metric: value}}`` of an evaluation's per-query values."""
    columns = {name: values.tolist() for name, values in evaluation.per_query.items()}
    return {
        qid: {name: values[i] for name, values in columns.items()}
        for i, qid in enumerate(evaluation.qids.tolist())
    }


def per_query_table(evaluations: dict[str, Evaluation]) -> pa.Table:
    """``system, qid, metric, value`` rows of each system's per-query values.

    Example:
        >>> from rerank_ray.metrics import evaluate
        >>> e = evaluate({"q1": ["a"]}, {"q1": {"a": 1}}, ["mrr@10"])
        >>> per_query_table({"retrieval": e}).to_pylist()
        [{'system': 'retrieval', 'qid': 'q1', 'metric': 'mrr@10', 'value': 1.0}]
    """
    parts = []
    for system, evaluation in evaluations.items():
        for metric, values in evaluation.per_query.items():
            count = len(values)
            parts.append(
                pa.table(
                    {
                        "system": pa.array([system] * count, pa.string()),
                        "qid": pa.array(evaluation.qids, pa.string()),
                        "metric": pa.array([metric] * count, pa.string()),
                        "value": pa.array(values, pa.float64()),
                    }
                )
            )
    if not parts:
        schema = pa.schema(
            [("system", pa.string()), ("qid", pa.string()), ("metric", pa.string()),
             ("value", pa.float64())]
        )  # fmt: skip
        return schema.empty_table()
    return pa.concat_tables(parts)


def depth_sweep(
    table: RerankedTable,
    retrieved: Hits,
    names: list[str],
    depths: tuple[int, ...],
    cost: dict,
) -> list[dict]:
    """A reranker's metrics had it reranked only the top ``d`` retrieved passages of each
    query, for each ``d`` in ``depths``, from the stored scores (nothing is scored again).

    At depth ``d`` a query's ranking is its pairs with retrieval rank at most ``d`` in the
    rerank's order (score descending, ties by retrieval rank), then the retrieval's order.
    The cost per 1,000 queries is the pairs scored and, when ``cost`` has the rerank's
    ``pairs`` and ``busy_seconds`` (actor-seconds), those seconds scaled by the share of pairs
    (an estimate: every pair is taken to cost the same), in GPU-seconds too where the actors
    had GPUs (``gpus_per_actor``). Pairs are counted over the queries that have a relevant
    passage, the ones the metrics average over.
    """
    queries = max(retrieved.num_queries, 1)
    sweep = []
    for depth in depths:
        pairs_per_1000 = 1000 * table.pairs_within(depth) / queries
        row = {"depth": depth, "pairs_per_1000_queries": round(pairs_per_1000, 1)}
        if cost.get("pairs") and cost.get("busy_seconds") is not None:
            seconds = cost["busy_seconds"] / cost["pairs"] * pairs_per_1000
            row["actor_seconds_per_1000_queries"] = round(seconds, 3)
            if cost.get("gpus_per_actor"):
                row["gpu_seconds_per_1000_queries"] = round(seconds * cost["gpus_per_actor"], 3)
        row["metrics"] = evaluate_hits(table.hits(retrieved, depth), names).metrics
        sweep.append(row)
    return sweep


def rerank_cost(manifest: dict, system: str) -> dict:
    """What the rerank stage spent on one reranker, from the run's manifest: the pairs it
    scored, its actors' busy seconds and, where they ran on GPUs, the GPUs per actor (for
    :func:`depth_sweep`)."""
    systems = (manifest.get("stages", {}).get("rerank") or {}).get("systems") or {}
    rerank = systems.get(system) or {}
    resources = rerank.get("resources") or {}
    on_gpus = resources.get("device") == "cuda"
    return {
        "pairs": rerank.get("rows"),
        "busy_seconds": (rerank.get("counts") or {}).get("busy_seconds"),
        "gpus_per_actor": resources.get("num_gpus_per_actor") if on_gpus else 0,
    }
