"""``rerank-ray compare RUN … --out DIR``: the systems of several run directories in one table,
each tested against one baseline.

A system is a run's ``retrieval`` or one of its rerankers, named ``FOLDER:retrieval`` (or
``FOLDER:bge-reranker-large``) after the run directory's folder name (other embedders, other candidates, other rerankers over the same
data). The runs must have been evaluated on the same judgements: their ``data/qrels.parquet``
are compared row by row and a difference is refused in one line naming both runs. Each
system's per-query values come from its run's ``per_query.parquet``; only the metrics every
system has are compared (runs that share none are refused, naming each run's metrics); the
tests are :mod:`rerank_ray.significance`'s, with Holm across every system compared with the
baseline (default: the first run's retrieval).

Writes ``compare.json`` (the means and every comparison), ``compare.md`` (the table, ``*``
on significant differences, the tests) and ``compare.png`` (each metric per system).

Example::

    compare_runs(["runs/bm25", "runs/dense"], "runs/compare")
    # {'systems': {'bm25:retrieval': {...}, 'dense:retrieval': {...}}, 'comparisons': [...]}
"""

from __future__ import annotations

import io as _io

from rerank_ray.errors import ConfigError
from rerank_ray.io import (
    claim_output_folder,
    exists,
    join,
    split,
    write_bytes,
    write_json,
    write_text,
)
from rerank_ray.metrics import DEFAULT_METRICS
from rerank_ray.parquet import read_table
from rerank_ray.rundir import RunDirectory
from rerank_ray.significance import ALPHA, RESAMPLES, SEED, compare_systems

FILES = ("compare.json", "compare.md", "compare.png")


def _name(run: RunDirectory, taken: set[str]) -> str:
    name = split(run.root.rstrip("/"))[1] or run.root
    while name in taken:
        name += "'"
    taken.add(name)
    return name


def _qrels(run: RunDirectory):
    path = join(run.data_dir, "qrels.parquet")
    if not exists(path):
        raise ConfigError(f"{run.root}: no prepared qrels; run it first")
    return read_table(path, columns=["qid", "pid", "relevance"]).sort_by(
        [("qid", "ascending"), ("pid", "ascending")]
    )


def load_systems(run_dirs: list[str]) -> tuple[dict, dict]:
    """``({system: {qid: {metric: value}}}, {system: {metric: mean}})`` of every run's
    systems, after checking that the runs share their qrels and at least one metric."""
    per_query: dict = {}
    means: dict = {}
    run_metrics: dict[str, list[str]] = {}  # run directory → the metrics it was evaluated on
    first, first_qrels, taken = None, None, set()
    for run_dir in run_dirs:
        run = RunDirectory(run_dir)
        recorded = "evaluate" in run.read_manifest().get("stages", {})
        if not recorded or not exists(run.per_query_path):
            raise ConfigError(
                f"{run.root}: not evaluated (or its evaluate stage was cut short); run"
                " `rerank-ray evaluate` on it first"
            )
        qrels = _qrels(run)
        if first is None:
            first, first_qrels = run, qrels
        elif not qrels.equals(first_qrels):
            raise ConfigError(
                f"{run.root} and {first.root} were evaluated on different qrels; compare runs"
                " of the same queries and judgements"
            )
        name = _name(run, taken)
        table = read_table(run.per_query_path).to_pydict()
        run_metrics[run.root] = list(dict.fromkeys(table["metric"]))
        for system, qid, metric, value in zip(
            table["system"], table["qid"], table["metric"], table["value"]
        ):
            per_query.setdefault(f"{name}:{system}", {}).setdefault(qid, {})[metric] = value
    for system, queries in per_query.items():
        names = {m for values in queries.values() for m in values}
        means[system] = {
            m: sum(values[m] for values in queries.values()) / len(queries) for m in sorted(names)
        }
    if means and not set.intersection(*(set(m) for m in means.values())):
        from rerank_ray.config import RunConfig

        raise ConfigError(_no_shared_metric(run_metrics), RunConfig, "metrics")
    return per_query, means


def _no_shared_metric(run_metrics: dict[str, list[str]]) -> str:
    """The refusal of runs whose systems have no metric in common, naming each run's.

    Example:
        >>> _no_shared_metric({"/r/a": ["recall@10"], "/r/b": ["p@10", "ndcg@5"]})
        '/r/a (recall@10) and /r/b (p@10, ndcg@5) share no metric; evaluate them with the same metrics'
    """
    named = [f"{run} ({', '.join(metrics) or 'no metric'})" for run, metrics in run_metrics.items()]
    runs = ", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]
    return f"{runs} share no metric; evaluate them with the same metrics"


def compare_runs(run_dirs: list[str], out: str, baseline: str | None = None) -> dict:
    """Compare the systems of ``run_dirs`` (at least one run); write :data:`FILES` into
    ``out``; return ``compare.json``'s content."""
    if not run_dirs:
        raise ConfigError("give at least one run directory to compare")
    per_query, means = load_systems(run_dirs)
    systems = list(per_query)
    baseline = baseline or systems[0]
    if baseline not in per_query:
        raise ConfigError(f"baseline {baseline!r} is none of the systems: {', '.join(systems)}")
    shared = set.intersection(*(set(m) for m in means.values()))
    metrics = [m for m in DEFAULT_METRICS if m in shared] + sorted(shared - set(DEFAULT_METRICS))
    comparisons = compare_systems(per_query, baseline, metrics)
    result = {
        "runs": [RunDirectory(r).root for r in run_dirs],
        "baseline": baseline,
        "alpha": ALPHA,
        "tests": "paired randomization (sign flips, two-sided), paired t-test, bootstrap BCa"
        f" 95% CI; {RESAMPLES} resamples, seed {SEED}; Holm across systems",
        "systems": {s: {m: means[s][m] for m in metrics} for s in systems},
        "comparisons": [c.to_dict() for c in comparisons],
    }
    claim_output_folder(out, "rerank-ray compare", list(FILES))
    write_json(join(out, "compare.json"), result)
    write_text(join(out, "compare.md"), render_comparison(result))
    write_bytes(join(out, "compare.png"), plot_comparison(result))
    return result


def comparison_table(result: dict) -> str:
    """One row per system, one column per metric; ``*`` where a system differs significantly
    from the baseline.

    Example:
        >>> print(comparison_table({"baseline": "a:retrieval", "systems": {
        ...     "a:retrieval": {"mrr@10": 0.5}, "b:ce": {"mrr@10": 0.75}},
        ...     "comparisons": [{"system": "b:ce", "metric": "mrr@10", "significant": True}]}))
        | system | mrr@10 |
        |---|---:|
        | a:retrieval (baseline) | 0.5000 |
        | b:ce | 0.7500* |
    """
    systems = result["systems"]
    metrics = list(next(iter(systems.values())))
    marked = {(c["system"], c["metric"]) for c in result["comparisons"] if c["significant"]}
    lines = ["| system | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for system, values in systems.items():
        label = system + (" (baseline)" if system == result["baseline"] else "")
        cells = [f"{values[m]:.4f}" + ("*" if (system, m) in marked else "") for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_note(result: dict) -> str:
    """The line that says what ``*`` means; '' when no difference is significant, so the
    table marks none.

    Example:
        >>> comparison_note({"alpha": 0.05, "baseline": "a:retrieval", "comparisons": [
        ...     {"system": "b:ce", "metric": "mrr@10", "significant": False}]})
        ''
    """
    if not any(c["significant"] for c in result["comparisons"]):
        return ""
    return (
        f"* significant at α = {result['alpha']} against {result['baseline']} (paired"
        " randomization test, Holm across systems)"
    )


def render_comparison(result: dict) -> str:
    """``compare.md``."""
    from rerank_ray.report import significance_table

    note = comparison_note(result)
    return "\n".join(
        [
            "# rerank-ray comparison",
            "",
            "Runs: " + ", ".join(f"`{r}`" for r in result["runs"]),
            "",
            comparison_table(result),
            "",
            *(["\\" + note + ".", ""] if note else []),
            significance_table(result),
            "",
        ]
    )


def plot_comparison(result: dict) -> bytes:
    """``compare.png``: each metric's mean per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result["systems"]
    metrics = list(next(iter(systems.values())))
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * len(systems) / 2), 4))
    width = 0.8 / len(systems)
    for index, (system, values) in enumerate(systems.items()):
        positions = [m + index * width for m in range(len(metrics))]
        axis.bar(positions, [values[m] for m in metrics], width, label=system)
    axis.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    axis.set(ylabel="mean", ylim=(0, 1), title="Systems compared")
    axis.legend(fontsize=8)
    figure.tight_layout()
    image = _io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    plt.close(figure)
    return image.getvalue()
