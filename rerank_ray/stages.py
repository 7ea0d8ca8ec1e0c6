"""The stages and the commands that run them: the one table the CLI, ``submit``, the pipeline
and ``jobs/`` read.

Example:
    >>> COMMANDS["rerank"].stages
    ('rerank', 'evaluate')
    >>> COMMANDS["run"].entrypoint
    'jobs/pipeline.py'
    >>> STAGE_TABLE["retrieve"].reads, STAGE_TABLE["retrieve"].writes
    (('embed',), ('retrieval_path',))
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """A stage: the stages whose outputs it reads, and its outputs (attributes of
    :class:`~rerank_ray.rundir.RunDirectory`) in the run directory."""

    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    #: Its outputs stand together: a new run of it removes them all first (none is reused).
    whole: bool = False


#: Every stage in order; each reads only what stages before it wrote in the run directory.
STAGE_TABLE = {
    stage.name: stage
    for stage in (
        Stage("prepare", (), ("data_dir",)),
        Stage("embed", ("prepare",), ("corpus_embeddings_dir", "query_embeddings_dir")),
        Stage("retrieve", ("embed",), ("retrieval_path",)),
        Stage("rerank", ("retrieve",), ("rerank_dir",)),
        Stage(
            "evaluate",
            ("retrieve", "rerank"),
            ("metrics_path", "per_query_path", "significance_path", "report_path", "plot_path"),
            whole=True,
        ),
    )
}
STAGES = tuple(STAGE_TABLE)


@dataclass(frozen=True)
class Command:
    """A ``rerank-ray`` command: the stages it runs, its ``--help`` line and the script that
    ``ray job submit`` runs for it."""

    name: str
    stages: tuple[str, ...]
    help: str
    entrypoint: str


COMMANDS = {
    command.name: command
    for command in (
        Command("run", STAGES, "run every stage", "jobs/pipeline.py"),
        Command(
            "embed",
            ("prepare", "embed"),
            "prepare data and embed corpus and queries",
            "jobs/embed.py",
        ),
        Command(
            "retrieve",
            ("retrieve",),
            "exact top-k over a run's embeddings (or rank its --candidates)",
            "jobs/retrieve.py",
        ),
        Command(
            "rerank",
            ("rerank", "evaluate"),
            "rerank a run's retrieved passages, then evaluate",
            "jobs/rerank.py",
        ),
        Command(
            "evaluate",
            ("evaluate",),
            "metrics and report from a run's retrieval (and rerank) results",
            "jobs/evaluate.py",
        ),
    )
}


def command_running(stage: str) -> Command:
    """The command that runs ``stage`` with the fewest other stages: the one a refusal names
    when the stage's output is missing.

    Example:
        >>> [command_running(stage).name for stage in STAGES]
        ['embed', 'embed', 'retrieve', 'rerank', 'evaluate']
    """
    return min((c for c in COMMANDS.values() if stage in c.stages), key=lambda c: len(c.stages))


def command_of_entrypoint(path: str) -> Command:
    """The command whose ``jobs/`` script is ``path`` (any absolute or relative spelling)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return next(c for c in COMMANDS.values() if c.entrypoint.rsplit("/", 1)[-1] == name)
