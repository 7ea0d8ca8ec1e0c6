"""The human-readable report of a run, from its metrics and manifest. Knows nothing of Ray or models."""

from __future__ import annotations

import io

from rerank_ray.io import write_bytes, write_text
from rerank_ray.metrics import (
    DEFAULT_METRICS,
    depth_note,
    parse_metric,
    recall_at_k,
    reciprocal_rank_at_k,
)
from rerank_ray.parquet import read_table

SMOKE_MODELS = ("minilm-smoke",)
SMOKE_NOTE = (
    "**minilm-smoke is a smoke-test reranker (MiniLM encoder + seeded random head): its scores"
    " and the rerank figures below mean nothing; they only show the machinery works.**"
)


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
    if "retrieval" in metrics and "rerank" in metrics:
        before, after = metrics["retrieval"], metrics["rerank"]
        cells = [
            f"{after[m] - before[m]:+.4f}" if m in after and m in before else "" for m in names
        ]
        lines.append("| difference | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_stages(before: dict, after: dict, qrels: dict) -> dict[str, int]:
    """How many judged queries the second ranking improved, hurt or left unchanged.

    Judged by reciprocal rank of the first relevant passage over the whole ranking.

    Example:
        >>> compare_stages({"q": ["a", "b"]}, {"q": ["b", "a"]}, {"q": {"b": 1}})
        {'improved': 1, 'hurt': 0, 'unchanged': 0}
    """
    counts = {"improved": 0, "hurt": 0, "unchanged": 0}
    for qid, judgements in qrels.items():
        if not any(r >= 1 for r in judgements.values()):
            continue
        old, new = before.get(qid, []), after.get(qid, [])
        rr_old = reciprocal_rank_at_k(old, judgements, max(len(old), 1))
        rr_new = reciprocal_rank_at_k(new, judgements, max(len(new), 1))
        key = "improved" if rr_new > rr_old else "hurt" if rr_new < rr_old else "unchanged"
        counts[key] += 1
    return counts


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


def render_report(metrics: dict, manifest: dict) -> str:
    """The report's Markdown: metrics, models, data and stage timings."""
    config = manifest.get("config", {})
    lines = ["# rerank-ray report", "", "## Metrics", ""]
    reranker = (manifest.get("models") or {}).get("reranker")
    if reranker and reranker.get("name") in SMOKE_MODELS:
        lines += [SMOKE_NOTE, ""]
    lines += [metrics_table(metrics), ""]
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
        lines += [note, "", "![recall@k and score distributions](report.png)", ""]
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


def write_report(path: str, metrics: dict, manifest: dict) -> None:
    """Write ``report.md`` atomically."""
    write_text(path, render_report(metrics, manifest))


def write_plot(
    path: str,
    rankings: dict,
    qrels: dict,
    rerank_path: str | None,
    top_k: int,
    note: str | None = None,
) -> None:
    """``report.png``: recall@k against k for each stage, and the reranker's scores of
    relevant and non-relevant pairs (when there is a rerank stage); ``note`` as a title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if rerank_path else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ks = list(range(1, top_k + 1))
    judged = {q: j for q, j in qrels.items() if any(r >= 1 for r in j.values())}
    for stage, ranking in rankings.items():
        curve = [
            sum(recall_at_k(ranking.get(q, []), j, k) for q, j in judged.items())
            / max(len(judged), 1)
            for k in ks
        ]
        axes[0][0].plot(ks, curve, label=stage)
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
    if note:
        figure.suptitle(note, color="darkred", fontsize=10)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, image.getvalue())
