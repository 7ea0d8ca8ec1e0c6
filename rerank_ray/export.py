"""``rerank-ray export``: a run's rankings as files other tools read (TREC runs for trec_eval).

Each ranked system of a run becomes one file: ``retrieval.trec`` (``retrieval.parquet``'s
ranking) and, when the run reranked, ``rerank.trec``, the ranking its rerank metrics
evaluate (the reranked top, then the rest of the retrieval). The tag names the system: the
embedder, or the candidates' own tag (their file's name when they have none or several),
and the reranker. Lines are written by :func:`rerank_ray.trec_run.write_trec_run`, whose
scores restate the ranks, so trec_eval on these files gives the figures of ``metrics.json``;
the models' scores stay in the Parquet files.

The files go to the run directory unless another folder is given. The run is held
(:meth:`~rerank_ray.rundir.RunDirectory.claim`) while it is read, and a stage that ranks a
system again removes that system's file from the run directory (:func:`exported_paths`), so
a run directory never holds an export of rankings it no longer has.

Example::

    export_run("runs/seed")
    # {'retrieval': 'runs/seed/retrieval.trec', 'rerank': 'runs/seed/rerank.trec'}
"""

from __future__ import annotations

from rerank_ray.errors import ConfigError
from rerank_ray.io import exists, join, makedirs, split
from rerank_ray.ranking import read_ranking
from rerank_ray.rerank import reranked_rankings
from rerank_ray.rundir import RunDirectory
from rerank_ray.trec_run import run_tag, write_trec_run

#: Each ranked system of a run, and the stage that ranks it.
SYSTEMS = {"retrieval": "retrieve", "rerank": "rerank"}
#: Each export format and the suffix of its files.
FORMATS = {"trec": ".trec"}


def exported_paths(run_root: str, stage: str) -> list[str]:
    """The files in the run directory exported from what ``stage`` ranked (every format)."""
    return [
        join(run_root, system + suffix)
        for system, ranked_by in SYSTEMS.items()
        if ranked_by == stage
        for suffix in FORMATS.values()
    ]


def system_tags(manifest: dict) -> dict[str, str]:
    """The run tag of each system the manifest records.

    Example:
        >>> system_tags({"models": {"embedder": {"name": "minilm"}, "reranker": None},
        ...              "stages": {"retrieve": {}}})
        {'retrieval': 'minilm', 'rerank': 'none'}
    """
    models = manifest.get("models") or {}
    retrieve = (manifest.get("stages") or {}).get("retrieve") or {}
    source = retrieve.get("candidates")
    if source:
        tags = source.get("tags") or []
        name = tags[0] if len(tags) == 1 else split(source["path"])[1]
    else:
        name = (models.get("embedder") or {}).get("name") or "retrieval"
    reranker = (models.get("reranker") or {}).get("name") or "none"
    return {"retrieval": run_tag(name), "rerank": run_tag(reranker)}


def export_run(run_dir: str, out_dir: str | None = None, format: str = "trec") -> dict[str, str]:
    """Write each ranked system of the run at ``run_dir`` as a ``format`` file in ``out_dir``
    (default: the run directory).

    Returns:
        ``{system: path written}``.

    Raises:
        ConfigError: ``run_dir`` is no run directory, has no retrieval, or another command
            holds it; ``format`` is unknown.
    """
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    run = RunDirectory(run_dir)
    manifest = run.read_manifest()
    if not manifest:
        raise ConfigError(f"{run.root}: not a run directory (no manifest.json)")
    with run.claim():
        manifest = run.read_manifest()  # as it is now that the run is held
        stages = manifest.get("stages", {})
        if "retrieve" not in stages or not exists(run.retrieval_path):
            raise ConfigError(f"{run.root}: no retrieval to export; run the 'retrieve' stage first")
        retrieval = read_ranking(run.retrieval_path)
        rankings = {"retrieval": retrieval}
        if "rerank" in stages and exists(run.rerank_path):
            rankings["rerank"] = reranked_rankings(run.rerank_path, retrieval)
        tags = system_tags(manifest)
        out = out_dir or run.root
        makedirs(out)
        written = {}
        for system, ranking in rankings.items():
            path = join(out, system + FORMATS[format])
            write_trec_run(path, ranking, tags[system])
            written[system] = path
    return written
