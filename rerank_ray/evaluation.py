"""The evaluate stage: each system's rankings against the qrels.

Rankings are read from the run's Parquet files (``retrieval.parquet``, and
``rerank.parquet`` whose reranked top is followed by the rest of the retrieval order); metrics
deeper than the retrieval depth are not computed (:func:`rerank_ray.metrics.within_depth`).
Writes ``metrics.json`` (``{system: {metric: mean}}``), ``per_query.parquet`` (``system, qid,
metric, value``: the values the means and the tests are computed from), ``significance.json``
(each system against the retrieval, :mod:`rerank_ray.significance`) and ``report.png``.

Example::

    from rerank_ray.evaluation import evaluate_run
    metrics, stats = evaluate_run("RUN/retrieval.parquet", None, "RUN/data/qrels.parquet",
                                  top_k=100, out=RunDirectory("RUN"))
    metrics["retrieval"]["recall@10"]
"""

from __future__ import annotations

import pyarrow as pa

from rerank_ray.io import write_json
from rerank_ray.metrics import DEFAULT_METRICS, evaluate, within_depth
from rerank_ray.parquet import read_table, write_table
from rerank_ray.ranking import read_ranking
from rerank_ray.report import compare_stages, most_changed, write_plot
from rerank_ray.rerank import reranked_rankings
from rerank_ray.significance import ALPHA, RESAMPLES, SEED, compare_systems
from rerank_ray.tables import read_qrels


def evaluate_run(
    retrieval_path: str,
    rerank_path: str | None,
    qrels_path: str,
    top_k: int,
    out,
    note: str | None = None,
    depths: tuple[int, ...] | None = None,
    rerank_cost: dict | None = None,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    queries_path: str | None = None,
) -> tuple[dict, dict]:
    """Metrics of the retrieval (and, with ``rerank_path``, the rerank) rankings.

    Writes the stage's outputs into ``out`` (a :class:`~rerank_ray.rundir.RunDirectory`),
    the plot with ``note`` on it (e.g. that the reranker is a smoke model). With ``depths``,
    also the rerank's metrics had it reranked only the top ``d`` of each query
    (:func:`depth_sweep`; ``rerank_cost``: the rerank stage's pairs and busy seconds).

    Returns:
        The metrics, and the stage's statistics: queries evaluated, queries without a
        relevant passage, metrics not reported for depth, and the rerank's effect per query.
    """
    names, deeper = within_depth(metrics, top_k)
    qrels = read_qrels(qrels_path)
    rankings = {"retrieval": read_ranking(retrieval_path)}
    if rerank_path:
        rankings["rerank"] = reranked_rankings(rerank_path, rankings["retrieval"])
    metrics: dict = {}
    per_query: dict = {}
    stats: dict = {}
    for stage, ranking in rankings.items():
        evaluation = evaluate(ranking, qrels, names)
        metrics[stage] = evaluation.metrics
        per_query[stage] = evaluation.per_query
        stats["evaluated_queries"] = evaluation.evaluated_queries
        stats["queries_without_relevant"] = evaluation.queries_without_relevant
    if deeper:
        stats["not_reported"] = deeper  # deeper than the rankings
    if rerank_path:
        stats["rerank_effect"] = compare_stages(rankings["retrieval"], rankings["rerank"], qrels)
        texts = {}
        if queries_path:
            table = read_table(queries_path, columns=["qid", "text"]).to_pydict()
            texts = dict(zip(table["qid"], table["text"]))
        stats["most_changed"] = most_changed(
            rankings["retrieval"], rankings["rerank"], qrels, texts
        )
    if rerank_path and depths:
        stats["depth_sweep"] = depth_sweep(
            rerank_path, rankings["retrieval"], qrels, names, depths, rerank_cost or {}
        )
    comparisons = compare_systems(per_query, "retrieval", names)
    write_json(out.metrics_path, metrics)
    write_table(per_query_table(per_query), out.per_query_path)
    write_json(
        out.significance_path,
        {
            "baseline": "retrieval",
            "alpha": ALPHA,
            "tests": "paired randomization (sign flips, two-sided), paired t-test, bootstrap"
            f" BCa 95% CI; {RESAMPLES} resamples, seed {SEED}; Holm across systems",
            "comparisons": [c.to_dict() for c in comparisons],
        },
    )
    write_plot(
        out.plot_path,
        rankings,
        qrels,
        rerank_path,
        top_k,
        note=note,
        sweep=stats.get("depth_sweep"),
    )
    return metrics, stats


def per_query_table(per_query: dict) -> pa.Table:
    """``system, qid, metric, value`` rows of ``{system: {qid: {metric: value}}}``.

    Example:
        >>> per_query_table({"retrieval": {"q1": {"mrr@10": 0.5}}}).to_pylist()
        [{'system': 'retrieval', 'qid': 'q1', 'metric': 'mrr@10', 'value': 0.5}]
    """
    rows = [
        (system, qid, metric, value)
        for system, queries in per_query.items()
        for qid, values in queries.items()
        for metric, value in values.items()
    ]
    columns = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.table(
        {
            "system": pa.array(columns[0], pa.string()),
            "qid": pa.array(columns[1], pa.string()),
            "metric": pa.array(columns[2], pa.string()),
            "value": pa.array(columns[3], pa.float64()),
        }
    )


def depth_sweep(
    rerank_path: str,
    retrieved: dict[str, list[str]],
    qrels: dict,
    names: list[str],
    depths: tuple[int, ...],
    cost: dict,
) -> list[dict]:
    """The rerank's metrics had it reranked only the top ``d`` retrieved passages of each
    query, for each ``d`` in ``depths``, from the stored scores (nothing is scored again).

    At depth ``d`` a query's ranking is its pairs with retrieval rank at most ``d`` in the
    rerank's order (score descending, ties by retrieval rank), then the retrieval's order.
    The cost per 1,000 queries is the pairs scored and, when ``cost`` has the rerank stage's
    ``pairs`` and ``busy_seconds`` (actor-seconds), those seconds scaled by the share of pairs
    (an estimate: every pair is taken to cost the same), in GPU-seconds too where the actors
    had GPUs (``gpus_per_actor``).
    """
    table = read_table(rerank_path, columns=["qid", "pid", "rank", "retrieval_rank"])
    order = table.sort_by([("qid", "ascending"), ("rank", "ascending")]).to_pydict()
    queries = max(len(retrieved), 1)
    sweep = []
    for depth in depths:
        heads: dict[str, list[str]] = {}
        pairs = 0
        for qid, pid, retrieval_rank in zip(order["qid"], order["pid"], order["retrieval_rank"]):
            if retrieval_rank <= depth:
                heads.setdefault(qid, []).append(pid)
                pairs += 1
        ranking = {}
        for qid, retrieval in retrieved.items():
            head = heads.get(qid, [])
            seen = set(head)
            ranking[qid] = head + [pid for pid in retrieval if pid not in seen]
        row = {"depth": depth, "pairs_per_1000_queries": round(1000 * pairs / queries, 1)}
        if cost.get("pairs") and cost.get("busy_seconds") is not None:
            seconds = cost["busy_seconds"] * pairs / cost["pairs"] * 1000 / queries
            row["actor_seconds_per_1000_queries"] = round(seconds, 3)
            if cost.get("gpus_per_actor"):
                row["gpu_seconds_per_1000_queries"] = round(seconds * cost["gpus_per_actor"], 3)
        row["metrics"] = evaluate(ranking, qrels, names).metrics
        sweep.append(row)
    return sweep


def rerank_cost(manifest: dict) -> dict:
    """What the rerank stage spent, from the run's manifest: the pairs it scored, its actors'
    busy seconds and, where they ran on GPUs, the GPUs per actor (for :func:`depth_sweep`)."""
    rerank = manifest.get("stages", {}).get("rerank") or {}
    resources = rerank.get("resources") or {}
    on_gpus = resources.get("device") == "cuda"
    return {
        "pairs": rerank.get("rows"),
        "busy_seconds": (rerank.get("counts") or {}).get("busy_seconds"),
        "gpus_per_actor": resources.get("num_gpus_per_actor") if on_gpus else 0,
    }
