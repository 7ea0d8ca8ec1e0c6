"""The human-readable report of a run, from its metrics and manifest. Knows nothing of Ray or models."""

from __future__ import annotations

import io

from rerank_ray.io import write_bytes, write_text
from rerank_ray.metrics import (
    depth_note,
    parse_metric,
)
from rerank_ray.parquet import read_table

SMOKE_MODELS = ("minilm-smoke",)
SMOKE_NOTE = (
    "**minilm-smoke is a smoke-test reranker (MiniLM encoder + seeded random head): its scores"
    " and the rerank figures below mean nothing; they only show the machinery works.**"
)


def metrics_table(metrics: dict[str, dict[str, float]], significant: set | None = None) -> str:
    """A Markdown table: one row per stage (``retrieval``, …), one column per metric, and the
    rerank's difference, marked ``*`` for the metrics in ``significant``.

    Example:
        >>> print(metrics_table({"retrieval": {"recall@1": 0.5, "mrr@10": 0.75}}))
        | stage | recall@1 | mrr@10 |
        |---|---:|---:|
        | retrieval | 0.5000 | 0.7500 |
    """
    names = list(dict.fromkeys(m for values in metrics.values() for m in values))
    lines = [
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for stage, values in metrics.items():
        cells = [f"{values[m]:.4f}" if m in values else "" for m in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    if "retrieval" in metrics and "rerank" in metrics:
        before, after = metrics["retrieval"], metrics["rerank"]
        marked = significant or set()
        cells = [
            f"{after[m] - before[m]:+.4f}" + ("*" if m in marked else "")
            if m in after and m in before
            else ""
            for m in names
        ]
        lines.append("| difference | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significant_metrics(significance: dict | None, system: str = "rerank") -> set[str]:
    """The metrics on which ``system`` differs significantly from the baseline."""
    comparisons = (significance or {}).get("comparisons", [])
    return {c["metric"] for c in comparisons if c["system"] == system and c["significant"]}


def significance_note(significance: dict | None) -> str:
    """The line that says what ``*`` means ('' when nothing was compared)."""
    if not (significance or {}).get("comparisons"):
        return ""
    return (
        f"* the difference is significant at α = {significance['alpha']} (paired randomization"
        f" test against {significance['baseline']}, Holm across systems; p-values and 95%"
        " confidence intervals in significance.json)"
    )


def significance_table(significance: dict | None) -> str:
    """Each comparison: mean difference, its bootstrap 95% CI and both tests' p-values.

    Example:
        >>> print(significance_table({"comparisons": [{"system": "rerank", "metric": "mrr@10",
        ...     "queries": 3, "mean_difference": 0.25, "ci_low": 0.0, "ci_high": 0.5,
        ...     "randomization_p": 0.5, "t_test_p": 0.42, "holm_p": 0.5, "significant": False}]}))
        | system | metric | queries | difference | 95% CI | p (randomization) | p (t-test) | p (Holm) | significant |
        |---|---|---:|---:|---|---:|---:|---:|---|
        | rerank | mrr@10 | 3 | +0.2500 | [+0.0000, +0.5000] | 0.5000 | 0.4200 | 0.5000 | no |
    """
    lines = [
        "| system | metric | queries | difference | 95% CI | p (randomization) | p (t-test)"
        " | p (Holm) | significant |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for c in (significance or {}).get("comparisons", []):
        lines.append(
            f"| {c['system']} | {c['metric']} | {c['queries']} | {c['mean_difference']:+.4f}"
            f" | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] | {c['randomization_p']:.4f}"
            f" | {c['t_test_p']:.4f} | {c['holm_p']:.4f} | {'yes' if c['significant'] else 'no'} |"
        )
    return "\n".join(lines)


def depth_table(sweep: list[dict] | None) -> str:
    """The depth sweep: per depth, the rerank's metrics and its cost per 1,000 queries.

    Example:
        >>> print(depth_table([{"depth": 10, "pairs_per_1000_queries": 10000.0,
        ...     "actor_seconds_per_1000_queries": 12.5, "metrics": {"mrr@10": 0.5}}]))
        | rerank depth | pairs / 1k queries | actor-s / 1k queries | mrr@10 |
        |---:|---:|---:|---:|
        | 10 | 10000 | 12.5 | 0.5000 |
    """
    if not sweep:
        return ""
    names = list(sweep[0]["metrics"])
    costs = [("pairs_per_1000_queries", "pairs / 1k queries", "{:.0f}")]
    for key, title in (
        ("actor_seconds_per_1000_queries", "actor-s / 1k queries"),
        ("gpu_seconds_per_1000_queries", "GPU-s / 1k queries"),
    ):
        if key in sweep[0]:
            costs.append((key, title, "{:.1f}"))
    lines = [
        "| rerank depth | " + " | ".join(t for _, t, _ in costs) + " | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * (len(costs) + len(names)),
    ]
    for row in sweep:
        cells = [fmt.format(row[key]) for key, _, fmt in costs]
        cells += [f"{row['metrics'][name]:.4f}" for name in names]
        lines.append(f"| {row['depth']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_stages(before: dict, after: dict, qrels: dict) -> dict[str, int]:
    """How many judged queries the second ranking improved, hurt or left unchanged.

    Judged by reciprocal rank of the first relevant passage over the whole ranking.

    Example:
        >>> compare_stages({"q": ["a", "b"]}, {"q": ["b", "a"]}, {"q": {"b": 1}})
        {'improved': 1, 'hurt': 0, 'unchanged': 0}
    """
    counts = {"improved": 0, "hurt": 0, "unchanged": 0}
    for _, _, _, delta in _first_relevant_changes(before, after, qrels):
        counts["improved" if delta > 0 else "hurt" if delta < 0 else "unchanged"] += 1
    return counts


def _first_relevant_changes(before: dict, after: dict, qrels: dict):
    """``(qid, rank before, rank after, change in reciprocal rank)`` of the first relevant
    passage, for each query with a relevant passage (a rank is ``None`` when none is ranked)."""
    for qid, judgements in qrels.items():
        if not any(r >= 1 for r in judgements.values()):
            continue
        old = first_relevant_rank(before.get(qid, []), judgements)
        new = first_relevant_rank(after.get(qid, []), judgements)
        yield qid, old, new, (1 / new if new else 0.0) - (1 / old if old else 0.0)


def first_relevant_rank(ranking: list[str], judgements: dict) -> int | None:
    """The 1-based rank of the first relevant passage, ``None`` when none is ranked."""
    for rank, pid in enumerate(ranking, start=1):
        if judgements.get(pid, 0) >= 1:
            return rank
    return None


def most_changed(before: dict, after: dict, qrels: dict, texts: dict, n: int = 10) -> dict:
    """The ``n`` queries the second ranking improved most and the ``n`` it hurt most, by the
    change in the reciprocal rank of the first relevant passage (ties by qid): each with its
    text and that rank before and after.

    Example:
        >>> most_changed({"q": ["a", "b"]}, {"q": ["b", "a"]}, {"q": {"b": 1}}, {"q": "why?"})
        {'improved': [{'qid': 'q', 'query': 'why?', 'before': 2, 'after': 1}], 'hurt': []}
    """
    changes = []
    for qid, old, new, delta in _first_relevant_changes(before, after, qrels):
        if delta:
            row = {"qid": qid, "query": texts.get(qid, ""), "before": old, "after": new}
            changes.append((delta, qid, row))
    improved = [row for delta, _, row in sorted(changes, key=lambda c: (-c[0], c[1])) if delta > 0]
    hurt = [row for delta, _, row in sorted(changes, key=lambda c: (c[0], c[1])) if delta < 0]
    return {"improved": improved[:n], "hurt": hurt[:n]}


def changed_table(rows: list[dict]) -> str:
    """The queries of :func:`most_changed` as a Markdown table."""
    lines = ["| qid | query | first relevant before | after |", "|---|---|---:|---:|"]
    for row in rows:
        query = row["query"].replace("|", "\\|")
        lines.append(f"| {row['qid']} | {query} | {row['before'] or '—'} | {row['after'] or '—'} |")
    return "\n".join(lines)


def rerank_depth_note(rerank_depth: int, metric_names) -> str:
    """Which recall figures reranking the top ``rerank_depth`` cannot change.

    Example:
        >>> rerank_depth_note(10, ["recall@1", "recall@10", "recall@100"])
        'Reranking reorders only the top 10 retrieved passages per query, so recall@10 and recall@100 cannot change; only the order inside the top 10 can.'
    """
    fixed = [
        m for m in metric_names if m.startswith("recall@") and parse_metric(m)[1] >= rerank_depth
    ]
    if not fixed:
        return ""
    return (
        f"Reranking reorders only the top {rerank_depth} retrieved passages per query, so "
        + " and ".join(fixed)
        + f" cannot change; only the order inside the top {rerank_depth} can."
    )


def render_report(metrics: dict, manifest: dict, significance: dict | None = None) -> str:
    """The report's Markdown: metrics (with the significance of the rerank's differences),
    models, data and stage timings."""
    config = manifest.get("config", {})
    lines = ["# rerank-ray report", "", "## Metrics", ""]
    reranker = (manifest.get("models") or {}).get("reranker")
    if reranker and reranker.get("name") in SMOKE_MODELS:
        lines += [SMOKE_NOTE, ""]
    lines += [metrics_table(metrics, significant_metrics(significance)), ""]
    if "rerank" in metrics and significance:
        lines += [significance_note(significance), "", significance_table(significance), ""]
    if "rerank" in metrics:
        depth = reranker["options"].get("top_k") or config.get("top_k")
        effect = manifest.get("stages", {}).get("evaluate", {}).get("rerank_effect", {})
        if effect:
            lines.append(
                f"The reranker improved {effect['improved']} queries, hurt {effect['hurt']} and"
                f" left {effect['unchanged']} unchanged (reciprocal rank of the first relevant"
                " passage)."
            )
        note = rerank_depth_note(depth, list(metrics["rerank"]))
        lines += [note, ""]
        changed = manifest.get("stages", {}).get("evaluate", {}).get("most_changed") or {}
        for kind in ("improved", "hurt"):
            if changed.get(kind):
                lines += [f"Most {kind} queries:", "", changed_table(changed[kind]), ""]
        sweep = manifest.get("stages", {}).get("evaluate", {}).get("depth_sweep")
        if sweep:
            lines += [
                "### How deep to rerank",
                "",
                "The rerank's metrics had it reranked only the top *d* retrieved passages of"
                " each query, from the stored scores; actor-seconds are the rerank stage's busy"
                " time scaled by the share of pairs (an estimate).",
                "",
                depth_table(sweep),
                "",
            ]
        lines += ["![recall@k and score distributions](report.png)", ""]
    evaluation = manifest.get("stages", {}).get("evaluate", {})
    if evaluation.get("not_reported"):
        depth = evaluation.get("depth", config.get("top_k"))
        lines += [depth_note(evaluation["not_reported"], depth), ""]
    if evaluation:
        lines.append(
            f"Averaged over {evaluation.get('evaluated_queries')} queries with at least one"
            f" relevant passage ({evaluation.get('queries_without_relevant')} without any were"
            " excluded)."
        )
        lines.append("")
    lines += ["## Models", "", "| role | name | path | fingerprint |", "|---|---|---|---|"]
    for role, model in manifest.get("models", {}).items():
        if model and model.get("path"):
            lines.append(
                f"| {role} | {model['name']} | `{model['path']}` | `{model['fingerprint'][:23]}…` |"
            )
    lines += ["", "## Data", "", "| table | rows | path |", "|---|---:|---|"]
    for table, info in manifest.get("data", {}).items():
        lines.append(f"| {table} | {info['rows']} | `{info['path']}` |")
    sources = config.get("data", {})
    given = ", ".join(f"{k}={v}" for k, v in sources.items() if v is not None)
    lines += ["", f"Sources: {given}; top-k {config.get('top_k')}.", ""]
    candidates = manifest.get("stages", {}).get("retrieve", {}).get("candidates")
    if candidates:
        lines += [
            f"Retrieval: the candidates in `{candidates['path']}` ({candidates['format']},"
            f" {candidates['rows']} rows), ranked by score as trec_eval ranks them, no embedder.",
            "",
        ]
    lines += [
        "## Timings",
        "",
        "| stage | wall s | rows | rows/s | resources |",
        "|---|---:|---:|---:|---|",
    ]
    for stage, stats in manifest.get("stages", {}).items():
        resources = stats.get("resources", "")
        if isinstance(resources, dict):
            resources = ", ".join(f"{k}={v}" for k, v in resources.items())
        lines.append(
            f"| {stage} | {stats.get('wall_seconds', '')} | {stats.get('rows', '')}"
            f" | {stats.get('rows_per_second', '')} | {resources} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_report(
    path: str, metrics: dict, manifest: dict, significance: dict | None = None
) -> None:
    """Write ``report.md`` atomically."""
    write_text(path, render_report(metrics, manifest, significance))


def recall_curve(ranking: dict, qrels: dict, depth: int) -> list[float]:
    """Mean recall@k for k = 1..``depth`` over the judged queries, in one pass over the rankings
    (each relevant passage found at rank r adds 1/|relevant| to every k >= r).

    Example:
        >>> recall_curve({"q": ["a", "x", "b"]}, {"q": {"a": 1, "b": 1}}, 3)
        [0.5, 0.5, 1.0]
    """
    import numpy as np

    found = np.zeros(depth + 1)
    judged = 0
    for qid, judgements in qrels.items():
        relevant = {pid for pid, grade in judgements.items() if grade >= 1}
        if not relevant:
            continue
        judged += 1
        for rank, pid in enumerate(ranking.get(qid, [])[:depth], start=1):
            if pid in relevant:
                found[rank] += 1 / len(relevant)
    return (np.cumsum(found)[1:] / max(judged, 1)).tolist()


def write_plot(
    path: str,
    rankings: dict,
    qrels: dict,
    rerank_path: str | None,
    top_k: int,
    note: str | None = None,
    sweep: list[dict] | None = None,
) -> None:
    """``report.png``: recall@k against k for each stage, the reranker's scores of relevant
    and non-relevant pairs (when there is a rerank stage), and nDCG@10 / MRR@10 against the
    rerank depth with its cost (with a depth ``sweep``); ``note`` as a title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(rerank_path) + bool(sweep)
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ks = list(range(1, top_k + 1))
    for stage, ranking in rankings.items():
        axes[0][0].plot(ks, recall_curve(ranking, qrels, top_k), label=stage)
    axes[0][0].set(xscale="log", xlabel="k", ylabel="recall@k", title="Recall by depth")
    axes[0][0].grid(True, alpha=0.3)
    axes[0][0].legend()
    if rerank_path:
        table = read_table(rerank_path, columns=["qid", "pid", "score"]).to_pydict()
        relevant, other = [], []
        for qid, pid, score in zip(table["qid"], table["pid"], table["score"]):
            (relevant if qrels.get(qid, {}).get(pid, 0) >= 1 else other).append(score)
        bins = 40
        axes[0][1].hist(
            other, bins=bins, alpha=0.6, density=True, label=f"non-relevant ({len(other)})"
        )
        axes[0][1].hist(
            relevant, bins=bins, alpha=0.6, density=True, label=f"relevant ({len(relevant)})"
        )
        axes[0][1].set(xlabel="reranker score (logit)", ylabel="density", title="Reranker scores")
        axes[0][1].legend()
    if sweep:
        axis = axes[0][panels - 1]
        depths = [row["depth"] for row in sweep]
        for name in ("ndcg@10", "mrr@10"):
            if name in sweep[0]["metrics"]:
                axis.plot(depths, [row["metrics"][name] for row in sweep], marker="o", label=name)
        axis.set(xlabel="rerank depth", ylabel="metric", title="How deep to rerank")
        axis.legend(loc="lower left")
        cost_key = (
            "actor_seconds_per_1000_queries"
            if "actor_seconds_per_1000_queries" in sweep[0]
            else "pairs_per_1000_queries"
        )
        cost = axis.twinx()
        cost.plot(depths, [row[cost_key] for row in sweep], color="gray", linestyle="--")
        cost.set_ylabel(cost_key.replace("_", " "))
    if note:
        figure.suptitle(note, color="darkred", fontsize=10)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, image.getvalue())
