"""The evaluate stage: each stage's rankings against the qrels, written as ``metrics.json``
and ``report.png``.

Rankings are read from the run's Parquet files (``retrieval.parquet``, and
``rerank.parquet`` whose reranked top is followed by the rest of the retrieval order); metrics
deeper than the retrieval depth are not computed (:func:`rerank_ray.metrics.within_depth`).

Example::

    from rerank_ray.evaluation import evaluate_run
    metrics, stats = evaluate_run("RUN/retrieval.parquet", None, "RUN/data/qrels.parquet",
                                  top_k=100, metrics_path="RUN/metrics.json",
                                  plot_path="RUN/report.png")
    metrics["retrieval"]["recall@10"]
"""

from __future__ import annotations

from rerank_ray.io import write_json
from rerank_ray.metrics import DEFAULT_METRICS, evaluate, within_depth
from rerank_ray.ranking import read_ranking
from rerank_ray.report import compare_stages, write_plot
from rerank_ray.rerank import reranked_rankings
from rerank_ray.tables import read_qrels


def evaluate_run(
    retrieval_path: str,
    rerank_path: str | None,
    qrels_path: str,
    top_k: int,
    metrics_path: str,
    plot_path: str,
    note: str | None = None,
) -> tuple[dict, dict]:
    """Metrics of the retrieval (and, with ``rerank_path``, the rerank) rankings.

    Writes ``metrics_path`` (``{stage: {metric: value}}``) and the plot (with ``note`` on it,
    e.g. that the reranker is a smoke model).

    Returns:
        The metrics, and the stage's statistics: queries evaluated, queries without a
        relevant passage, metrics not reported for depth, and the rerank's effect per query.
    """
    names, deeper = within_depth(DEFAULT_METRICS, top_k)
    qrels = read_qrels(qrels_path)
    rankings = {"retrieval": read_ranking(retrieval_path)}
    if rerank_path:
        rankings["rerank"] = reranked_rankings(rerank_path, rankings["retrieval"])
    metrics: dict = {}
    stats: dict = {}
    for stage, ranking in rankings.items():
        evaluation = evaluate(ranking, qrels, names)
        metrics[stage] = evaluation.metrics
        stats["evaluated_queries"] = evaluation.evaluated_queries
        stats["queries_without_relevant"] = evaluation.queries_without_relevant
    if deeper:
        stats["not_reported"] = deeper  # deeper than the rankings
    if rerank_path:
        stats["rerank_effect"] = compare_stages(rankings["retrieval"], rankings["rerank"], qrels)
    write_json(metrics_path, metrics)
    write_plot(plot_path, rankings, qrels, rerank_path, top_k, note=note)
    return metrics, stats
