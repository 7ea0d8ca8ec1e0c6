"""The human-readable report of a run, from its metrics and manifest. Knows nothing of Ray or models."""

from __future__ import annotations

from rerank_ray.io import atomic_path
from rerank_ray.metrics import DEFAULT_METRICS


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per stage (``retrieval``, …), one column per metric.

    Example:
        >>> print(metrics_table({"retrieval": {"recall@1": 0.5, "mrr@10": 0.75}}))
        | stage | recall@1 | mrr@10 |
        |---|---:|---:|
        | retrieval | 0.5000 | 0.7500 |
    """
    names = [m for m in DEFAULT_METRICS if any(m in v for v in metrics.values())]
    names += sorted({m for v in metrics.values() for m in v} - set(names))
    lines = [
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for stage, values in metrics.items():
        cells = [f"{values[m]:.4f}" if m in values else "" for m in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(metrics: dict, manifest: dict) -> str:
    """The report's Markdown: metrics, models, data and stage timings."""
    config = manifest.get("config", {})
    lines = ["# rerank-ray report", "", "## Metrics", "", metrics_table(metrics), ""]
    evaluation = manifest.get("stages", {}).get("evaluate", {})
    if evaluation:
        lines.append(
            f"Averaged over {evaluation.get('evaluated_queries')} queries with at least one"
            f" relevant passage ({evaluation.get('queries_without_relevant')} without any were"
            " excluded)."
        )
        lines.append("")
    lines += ["## Models", "", "| role | name | path | fingerprint |", "|---|---|---|---|"]
    for role, model in manifest.get("models", {}).items():
        if model:
            lines.append(
                f"| {role} | {model['name']} | `{model['path']}` | `{model['fingerprint'][:23]}…` |"
            )
    lines += ["", "## Data", "", "| table | rows | path |", "|---|---:|---|"]
    for table, info in manifest.get("data", {}).items():
        lines.append(f"| {table} | {info['rows']} | `{info['path']}` |")
    sources = config.get("data", {})
    given = ", ".join(f"{k}={v}" for k, v in sources.items() if v is not None)
    lines += ["", f"Sources: {given}; top-k {config.get('top_k')}.", ""]
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


def write_report(path: str, metrics: dict, manifest: dict) -> None:
    """Write ``report.md`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(render_report(metrics, manifest))
