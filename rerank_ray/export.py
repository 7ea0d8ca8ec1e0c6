"""``rerank-ray export``: a run's rankings as files other tools read (TREC runs for trec_eval).

Each ranked system of a run becomes one file: ``retrieval.trec`` (``retrieval.parquet``'s
ranking) and, for each reranker, ``rerank/<system>.trec``, the ranking its metrics evaluate
(the reranked top, then the rest of the retrieval). The tag names the system: the embedder,
or the candidates' own tag (their file's name when they have none or several), and the
reranker. Lines are written by :func:`rerank_ray.trec_run.write_trec_run`, whose scores
restate the ranks, so trec_eval on these files gives the figures of ``metrics.json``; the
models' scores stay in the Parquet files.

The files go next to the rankings they come from unless another folder is given. The run is
held (:meth:`~rerank_ray.rundir.RunDirectory.claim`) while it is read, and a stage that ranks
a system again removes that system's file from the run directory (:func:`exported_paths`), so
a run directory never holds an export of rankings it no longer has.

Example::

    export_run("runs/seed")
    # {'retrieval': 'runs/seed/retrieval.trec', 'minilm-smoke': 'runs/seed/rerank/minilm-smoke.trec'}
"""

from __future__ import annotations

from rerank_ray.errors import ConfigError
from rerank_ray.io import claim_output_folder, exists, join, makedirs, split
from rerank_ray.parquet import parquet_schema
from rerank_ray.ranking import read_ranking
from rerank_ray.rerank import reranked_rankings
from rerank_ray.rundir import RunDirectory
from rerank_ray.systems import system_stem
from rerank_ray.trec_run import run_tag, write_trec_run

#: Each export format and the suffix of its files.
FORMATS = {"trec": ".trec"}


def exported_paths(run_root: str, stage: str, system: str | None = None) -> list[str]:
    """The files in the run directory exported from what ``stage`` ranked (every format):
    the retrieval's for ``retrieve``, ``system``'s for ``rerank`` (the rerank folder holds
    every reranker's, and goes with the stage's outputs)."""
    run = RunDirectory(run_root)
    if stage == "retrieve":
        return [join(run.root, "retrieval" + suffix) for suffix in FORMATS.values()]
    if stage == "rerank" and system is not None:
        return [join(run.rerank_dir, system_stem(system) + s) for s in FORMATS.values()]
    return []


def system_tags(manifest: dict) -> dict[str, str]:
    """The run tag of each system the manifest records.

    Example:
        >>> system_tags({"models": {"embedder": {"name": "minilm"},
        ...              "rerankers": {"bi:e5": {"name": "bi:e5"}}}, "stages": {"retrieve": {}}})
        {'retrieval': 'minilm', 'bi:e5': 'bi:e5'}
    """
    models = manifest.get("models") or {}
    retrieve = (manifest.get("stages") or {}).get("retrieve") or {}
    source = retrieve.get("candidates")
    if source:
        tags = source.get("tags") or []
        name = tags[0] if len(tags) == 1 else split(source["path"])[1]
    else:
        name = (models.get("embedder") or {}).get("name") or "retrieval"
    tags = {"retrieval": run_tag(name)}
    for system, model in (models.get("rerankers") or {}).items():
        tags[system] = run_tag(model.get("name") or system)
    return tags


def export_run(run_dir: str, out_dir: str | None = None, format: str = "trec") -> dict[str, str]:
    """Write each ranked system of the run at ``run_dir`` as a ``format`` file in ``out_dir``
    (default: the run directory).

    Returns:
        ``{system: path written}``.

    Raises:
        ConfigError: ``run_dir`` is no run directory, has no retrieval or lacks a reranker's
            file, or another command holds it; ``format`` is unknown.
        DataError: a ranking is not a readable Parquet file (nothing is written).
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
        systems = ["retrieval", *((stages.get("rerank") or {}).get("systems") or {})]
        # Every system's ranking is checked readable before any file is written.
        for system in systems[1:]:
            if not exists(run.rerank_path(system)):
                raise ConfigError(
                    f"{run.rerank_path(system)}: missing; run the 'rerank' stage first"
                )
        for path in (run.retrieval_path, *map(run.rerank_path, systems[1:])):
            parquet_schema(path)
        if out_dir is not None:
            names = [system_stem(system) + FORMATS[format] for system in systems]
            claim_output_folder(out_dir, f"the export of {run.root}", names)
        retrieval = read_ranking(run.retrieval_path)
        tags = system_tags(manifest)
        written = {}
        for system in systems:
            if system == "retrieval":
                ranking, folder = retrieval, out_dir or run.root
            else:
                ranking = reranked_rankings(run.rerank_path(system), retrieval)
                folder = out_dir or run.rerank_dir
            makedirs(folder)
            path = join(folder, system_stem(system) + FORMATS[format])
            write_trec_run(path, ranking, tags[system])
            written[system] = path
    return written
