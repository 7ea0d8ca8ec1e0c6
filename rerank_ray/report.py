"""The human-readable report of a run, from its metrics and manifest. Knows nothing of Ray or models."""

from __future__ import annotations

import io

from rerank_ray.io import write_bytes, write_text
from rerank_ray.metrics import (
    depth_note,
    parse_metric,
)

SMOKE_MODELS = ("minilm-smoke",)
SMOKE_NOTE = (
    "**minilm-smoke is a smoke-test reranker (MiniLM encoder + seeded random head): its scores"
    " and the rerank figures below mean nothing; they only show the machinery works.**"
)


def metrics_table(
    metrics: dict[str, dict[str, float]],
    significant: dict[str, set] | None = None,
    baseline: str = "retrieval",
) -> str:
    """A Markdown table: one row per system (``retrieval``, then each reranker), one column
    per metric, then each other system's difference from ``baseline`` (``Δ system``), marked
    ``*`` for the metrics in ``significant[system]``.

    Example:
        >>> print(metrics_table({"retrieval": {"mrr@10": 0.5}, "ce": {"mrr@10": 0.75}}, {"ce": {"mrr@10"}}))
        | system | mrr@10 |
        |---|---:|
        | retrieval | 0.5000 |
        | ce | 0.7500 |
        | Δ ce | +0.2500* |
    """
    names = list(dict.fromkeys(m for values in metrics.values() for m in values))
    lines = [
        "| system | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for system, values in metrics.items():
        cells = [f"{values[m]:.4f}" if m in values else "" for m in names]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    before = metrics.get(baseline)
    for system, after in metrics.items():
        if before is None or system == baseline:
            continue
        marked = (significant or {}).get(system, set())
        cells = [
            f"{after[m] - before[m]:+.4f}" + ("*" if m in marked else "")
            if m in after and m in before
            else ""
            for m in names
        ]
        lines.append(f"| Δ {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def significant_metrics(significance: dict | None) -> dict[str, set]:
    """``{system: metrics on which it differs significantly from the baseline}``."""
    found: dict[str, set] = {}
    for c in (significance or {}).get("comparisons", []):
        if c["significant"]:
            found.setdefault(c["system"], set()).add(c["metric"])
    return found


def significance_note(significance: dict | None) -> str:
    """The line that says what ``*`` means; '' when no difference is significant, so no
    table marks one."""
    if not significant_metrics(significance):
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


def candidates_note(manifest: dict) -> str:
    """The sentence saying how many queries a candidates file left without a ranking ('' when
    it ranked every query or the run has no candidates), from the retrieve stage's record.

    Example:
        >>> candidates_note({"stages": {"retrieve": {"queries": 1, "queries_without_candidates": 59}}})
        '59 of 60 queries have no candidates (they count as retrieving nothing).'
    """
    retrieve = (manifest.get("stages") or {}).get("retrieve") or {}
    missing = retrieve.get("queries_without_candidates")
    if not missing:
        return ""
    total = retrieve.get("queries", 0) + missing
    return f"{missing} of {total} queries have no candidates (they count as retrieving nothing)."


def retrieval_description(manifest: dict) -> str:
    """What the ``retrieval`` row ranked: the retriever, its options and the vectors' source.

    Example:
        >>> retrieval_description({"config": {"retriever": "bm25", "top_k": 100,
        ...                        "bm25": {"k1": 0.9, "b": 0.4, "rrf_k": 60}}})
        'Retrieval: BM25 (bm25s; k1 0.9, b 0.4); the top 100 passages per query.'
    """
    config = manifest.get("config") or {}
    bm25 = config.get("bm25") or {}
    lexical = f"BM25 (bm25s; k1 {bm25.get('k1')}, b {bm25.get('b')})"
    embedder = (manifest.get("models") or {}).get("embedder") or {}
    options = embedder.get("options") or {}
    dense = (
        f"the exact inner-product top-k of {embedder.get('name') or config.get('embedder')}'s"
        f" vectors (pooling {options.get('pooling')}, max length {options.get('query_max_length')}"
        f" for queries and {options.get('passage_max_length')} for passages, query instruction"
        f" {options.get('query_instruction')!r}, normalized {options.get('normalize')}, stored"
        f" as {options.get('storage')})"
    )
    supplied = [
        f"{role} vectors supplied from `{config[key]}`"
        for role, key in (("corpus", "corpus_embeddings"), ("query", "query_embeddings"))
        if config.get(key)
    ]
    if supplied:
        dense += ", " + " and ".join(supplied)
    retriever = config.get("retriever", "dense")
    if retriever == "bm25":
        text = lexical
    elif retriever == "hybrid":
        text = f"reciprocal-rank fusion (k {bm25.get('rrf_k')}) of {lexical} and {dense}"
    else:
        text = dense
    return f"Retrieval: {text}; the top {config.get('top_k')} passages per query."


def render_report(metrics: dict, manifest: dict, significance: dict | None = None) -> str:
    """The report's Markdown: metrics (with the significance of each system's differences
    from the baseline), each reranker's effect and depth sweep, models, data and timings."""
    config = manifest.get("config", {})
    evaluation = manifest.get("stages", {}).get("evaluate", {})
    rerankers = (manifest.get("models") or {}).get("rerankers") or {}
    lines = ["# rerank-ray report", "", "## Metrics", ""]
    smoke = [s for s, model in rerankers.items() if model.get("name") in SMOKE_MODELS]
    if smoke:
        lines += [SMOKE_NOTE, ""]
    baseline = (significance or {}).get("baseline", "retrieval")
    lines += [metrics_table(metrics, significant_metrics(significance), baseline), ""]
    if candidates_note(manifest):
        lines += [candidates_note(manifest), ""]
    if len(metrics) > 1 and significance:
        note = significance_note(significance)
        lines += [note, ""] if note else []
        lines += [significance_table(significance), ""]
    depth = (config.get("rerank") or {}).get("top_k") or config.get("top_k")
    for system in rerankers:
        if system not in metrics:
            continue
        lines += [f"### {system}", ""]
        effect = (evaluation.get("rerank_effect") or {}).get(system)
        if effect:
            lines.append(
                f"{system} improved {effect['improved']} queries, hurt {effect['hurt']} and"
                f" left {effect['unchanged']} unchanged against the retrieval (reciprocal rank"
                " of the first relevant passage)."
            )
        note = rerank_depth_note(depth, list(metrics[system]))
        lines += [note, ""]
        changed = (evaluation.get("most_changed") or {}).get(system) or {}
        for kind in ("improved", "hurt"):
            if changed.get(kind):
                lines += [f"Most {kind} queries:", "", changed_table(changed[kind]), ""]
        sweep = (evaluation.get("depth_sweep") or {}).get(system)
        if sweep:
            lines += [
                "How deep to rerank: the metrics had it reranked only the top *d* retrieved"
                " passages of each query, from the stored scores; actor-seconds are its busy"
                " time scaled by the share of pairs (an estimate).",
                "",
                depth_table(sweep),
                "",
            ]
    if rerankers:
        lines += ["![recall@k, score distributions, depth](report.png)", ""]
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
    models = manifest.get("models") or {}
    roles = [("embedder", models.get("embedder"))]
    roles += [(f"reranker {system}", model) for system, model in rerankers.items()]
    for role, model in roles:
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
    if not candidates:
        lines += [retrieval_description(manifest), ""]
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


def write_plot(
    path: str,
    curves: dict[str, list[float]],
    scores: dict[str, tuple],
    notes: dict[str, str] | None = None,
    sweeps: dict[str, list[dict]] | None = None,
) -> None:
    """``report.png``: recall@k against k for each system (``curves``, k from 1), each
    reranker's scores of relevant and other pairs (``scores``: ``{system: (relevant,
    other)}``), and nDCG@10 / MRR@10 against the rerank depth with its cost (``sweeps``);
    ``notes`` as a title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(scores) + bool(sweeps)
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for system, curve in curves.items():
        axes[0][0].plot(range(1, len(curve) + 1), curve, label=system)
    axes[0][0].set(xscale="log", xlabel="k", ylabel="recall@k", title="Recall by depth")
    axes[0][0].grid(True, alpha=0.3)
    axes[0][0].legend()
    if scores:
        axis = axes[0][1]
        for system, (relevant, other) in scores.items():
            label = f"{system}: " if len(scores) > 1 else ""
            axis.hist(other, bins=40, alpha=0.5, density=True,
                      label=f"{label}non-relevant ({len(other)})")  # fmt: skip
            axis.hist(relevant, bins=40, alpha=0.5, density=True,
                      label=f"{label}relevant ({len(relevant)})")  # fmt: skip
        axis.set(xlabel="reranker score", ylabel="density", title="Reranker scores")
        axis.legend(fontsize=8)
    if sweeps:
        axis = axes[0][panels - 1]
        cost = axis.twinx()
        for system, sweep in sweeps.items():
            depths = [row["depth"] for row in sweep]
            for name in ("ndcg@10", "mrr@10"):
                if name in sweep[0]["metrics"]:
                    values = [row["metrics"][name] for row in sweep]
                    axis.plot(depths, values, marker="o", label=f"{system} {name}")
            cost_key = (
                "actor_seconds_per_1000_queries"
                if "actor_seconds_per_1000_queries" in sweep[0]
                else "pairs_per_1000_queries"
            )
            cost.plot(depths, [row[cost_key] for row in sweep], color="gray", linestyle="--")
            cost.set_ylabel(cost_key.replace("_", " "))
        axis.set(xlabel="rerank depth", ylabel="metric", title="How deep to rerank")
        axis.legend(loc="lower left", fontsize=8)
    if notes:
        figure.suptitle("; ".join(sorted(set(notes.values()))), color="darkred", fontsize=10)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, image.getvalue())
