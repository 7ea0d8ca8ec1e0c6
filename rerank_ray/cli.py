"""``rerank-ray``: one parser → a typed :class:`RunConfig` → :mod:`rerank_ray.pipeline`.

Subcommands:
    run       every stage: prepare, embed, retrieve, rerank, evaluate
    embed     prepare the data and embed corpus and queries into a run directory
    retrieve  exact top-k over the run's embeddings
    rerank    rescore the run's retrieved passages with a cross-encoder, then evaluate
    evaluate  metrics.json, report.md and report.png from the run's rankings
    submit    any of the above as a Ray job on a cluster: rerank-ray submit --address URL -- run …
    export    a run's rankings as TREC run files: rerank-ray export RUN --format trec [--out DIR]
    compare   several runs' systems in one table with significance: rerank-ray compare RUN … --out DIR
    cleanup   stop the Ray processes that killed local runs left running

A stage run on an existing run directory takes the config recorded in its manifest;
options given on the command line override it. A stage command on a folder without a manifest
is refused before anything is written, unless it prepares the data (``embed``) and is given a
data source (``--dataset``, ``--corpus``, ``--queries``, ``--qrels`` or ``--beir``).

Example:
    $ rerank-ray run --dataset ../shared/data/msmarco-dev/dev.jsonl --corpus-rows 5000 \\
        --num-queries 100 --embedder minilm --reranker none --out runs/seed
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rerank_ray.config import HELP_GROUPS, RunConfig
from rerank_ray.errors import ConfigError, UserError
from rerank_ray.io import absolute_if_local, is_uri
from rerank_ray.options import add_arguments, walk
from rerank_ray.stages import COMMANDS


def _options_parser() -> argparse.ArgumentParser:
    """Every stage option (generated from :class:`RunConfig`'s declarations) and the flags
    that are not part of a run's config."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser, RunConfig, HELP_GROUPS)
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print the libraries' own messages"
    )
    parser.add_argument(
        "--force", action="store_true", help="run: redo stages that are already complete"
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser shared by the ``rerank-ray`` script and the ``jobs/`` entrypoints."""
    parser = argparse.ArgumentParser(
        prog="rerank-ray",
        description="Evaluate embedding retrieval (and reranking) on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    options = _options_parser()
    for command in COMMANDS.values():
        commands.add_parser(
            command.name, parents=[options], help=command.help, description=command.help
        )
    submit = commands.add_parser(
        "submit",
        help="run a command as a Ray job on a cluster and follow it",
        description="Submit `rerank-ray COMMAND …` as a Ray job (entrypoint jobs/<stage>.py),"
        " follow its logs and exit with its status. Example: rerank-ray submit --address"
        " http://127.0.0.1:8265 -- run --dataset dev.jsonl --embedder minilm --out runs/job",
    )
    submit.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="the cluster's job server, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS)",
    )
    submit.add_argument(
        "--working-dir",
        help="the rerank-ray checkout to send, without .gitignore'd files, .env files, keys and"
        " credentials (default: the installed project's root, the folder holding jobs/)",
    )
    submit.add_argument("--no-wait", dest="wait", action="store_false", help="submit and return")
    submit.add_argument("job", nargs=argparse.REMAINDER, help="-- COMMAND [options]")
    export = commands.add_parser(
        "export",
        help="write a run's rankings as TREC run files",
        description="Write each ranked system of a run as a TREC run (qid Q0 pid rank score"
        " tag): retrieval.trec and, per reranker, rerank/<system>.trec in the run directory"
        " (<system>.trec beside retrieval.trec with --out). Ranks from 1; the score restates"
        " the rank, so trec_eval reads back the rankings metrics.json evaluated.",
    )
    export.add_argument("run", metavar="RUN", help="the run directory")
    export.add_argument(
        "--format", choices=("trec",), default="trec", help="file format (default: trec)"
    )
    export.add_argument("--out", metavar="DIR", help="where to write (default: the run directory)")
    compare = commands.add_parser(
        "compare",
        help="several runs' systems in one table, with paired significance tests",
        description="Compare the retrieval and rerank systems of run directories evaluated on"
        " the same qrels: compare.md, compare.json and compare.png in --out; each system is"
        " tested against the baseline (paired randomization and t-tests, bootstrap CI, Holm).",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    compare.add_argument("--out", metavar="DIR", required=True, help="where to write")
    compare.add_argument(
        "--baseline", metavar="SYSTEM", help="e.g. bm25:retrieval (default: the first run's)"
    )
    commands.add_parser(
        "cleanup",
        help="stop Ray processes left by local runs whose process was killed",
        description="Stop the Ray processes (agents, workers) that a local run's private Ray left"
        " running after the run was killed (e.g. SIGKILL); only processes recorded by such runs"
        " are stopped. Every local run does this too when it starts.",
    )
    return parser


def _starts_a_run(command: str, overrides: dict) -> bool:
    """Whether a stage command may start a new run directory: it prepares the data, and a
    data source is given (the data section's path options are its sources)."""
    sources = {path for path, spec in walk(RunConfig) if path.startswith("data.") and spec.path}
    return "prepare" in COMMANDS[command].stages and not sources.isdisjoint(overrides)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Turn parsed options into a :class:`RunConfig`, on top of the run's manifest if any."""
    from rerank_ray.pipeline import load_config

    paths = {path for path, _ in walk(RunConfig)}
    overrides = {path: value for path, value in vars(args).items() if path in paths}
    # Inputs and the cache are recorded as absolute paths: a later command on the run
    # directory, from another working directory, reads the same files (the run directory
    # stays as typed: it is found again by what the later command names). A model given by
    # a bare name stays a name: aliases (minilm) win over folders.
    inputs = {path for path, spec in walk(RunConfig) if spec.path} - {"out"}
    models = {"embedder", "rerank.models"}

    def absolute(path: str, value: str) -> str:
        if path in models and not value.startswith(".") and os.sep not in value:
            return value
        if path == "cache_dir" and not is_uri(value):  # made when first written
            return os.path.abspath(value)
        return absolute_if_local(value)

    for path in inputs & set(overrides):
        value = overrides[path]
        if isinstance(value, (list, tuple)):
            overrides[path] = type(value)(absolute(path, v) for v in value)
        else:
            overrides[path] = absolute(path, value)
    if "out" not in overrides:
        raise UserError("--out RUN_DIR is required")
    base = None if args.command == "run" else load_config(overrides["out"])
    if base is None and args.command != "run" and not _starts_a_run(args.command, overrides):
        out = overrides["out"]
        raise ConfigError(
            f"{out}: not a run directory (no manifest.json); `rerank-ray run --out {out} ...`"
            " creates one"
        )
    # Where a command runs is its own: a cluster joined before is not joined again unasked.
    overrides.setdefault("compute.address", None)
    if base is None:
        base = RunConfig(out=overrides["out"])
    return base.updated(overrides)


def _print_summary(config: RunConfig, metrics: dict, depth: int) -> None:
    from rerank_ray.cross_encoder import SMOKE_WARNING, is_smoke_model
    from rerank_ray.io import exists, read_json
    from rerank_ray.metrics import depth_note, within_depth
    from rerank_ray.report import (
        candidates_note,
        depth_table,
        metrics_table,
        significance_note,
        significant_metrics,
    )
    from rerank_ray.rundir import RunDirectory

    run = RunDirectory(config.out)
    significance = read_json(run.significance_path) if exists(run.significance_path) else None
    print()
    if config.candidates:
        retrieval = f"candidates: {config.candidates}"
    elif config.retriever == "bm25":
        retrieval = "retriever: bm25"
    else:
        retrieval = f"embedder: {config.embedder}"
        if config.retriever == "hybrid":
            retrieval = f"retriever: hybrid (bm25 + {config.embedder})"
    rerankers = ", ".join(config.rerank.models)
    print(f"{retrieval}   reranker: {rerankers}   top-k: {config.top_k}")
    print(metrics_table(metrics, significant_metrics(significance), config.baseline))
    if len(metrics) > 1 and significance_note(significance):
        print(significance_note(significance))
    manifest = run.read_manifest()
    sweeps = manifest.get("stages", {}).get("evaluate", {}).get("depth_sweep") or {}
    for system, sweep in sweeps.items():
        print(f"\nrerank depth of {system} (its metrics had it reranked only the top d):")
        print(depth_table(sweep))
    _, deeper = within_depth(config.metric_names, depth)
    if deeper:
        print(f"NOTE: {depth_note(deeper, depth)}")
    if candidates_note(manifest):
        print(f"NOTE: {candidates_note(manifest)}")
    for system, model in config.rerank.systems.items():
        if is_smoke_model(model):
            print(f"NOTE: {SMOKE_WARNING}; the {system} row shows the machinery, not a result.")
    print(f"report: {run.report_path}")


def _submit(args: argparse.Namespace) -> int:
    from rerank_ray.submit import submit

    if not args.address:
        raise UserError(
            "submit needs --address (or RAY_API_SERVER_ADDRESS), e.g. http://127.0.0.1:8265"
        )
    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    return submit(args.address, job, working_dir=args.working_dir, wait=args.wait)


def _cleanup() -> int:
    from rerank_ray.local_ray import stop_orphans

    stopped = stop_orphans()
    for entry in stopped:
        print(f"stopped pid {entry['pid']} ({entry['name']}) of {entry['session_dir']}")
    print(f"cleanup: stopped {len(stopped)} process(es) left by killed local runs")
    return 0


def _check_out_folder(out: str | None) -> None:
    """Refuse an ``--out`` that cannot be a folder before anything is read or computed."""
    from rerank_ray.io import not_a_folder

    problem = not_a_folder(out) if out is not None else None
    if problem:
        raise UserError(f"--out {out}: {problem}")


def _export(args: argparse.Namespace) -> int:
    from rerank_ray.export import export_run

    _check_out_folder(args.out)
    for system, path in export_run(args.run, args.out, args.format).items():
        print(f"{system}: {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from rerank_ray.compare import compare_runs, comparison_note, comparison_table

    _check_out_folder(args.out)
    result = compare_runs(args.runs, args.out, args.baseline)
    print(comparison_table(result))
    note = comparison_note(result)
    print(f"{note}; {args.out}/compare.md" if note else f"{args.out}/compare.md")
    return 0


def _user_error_in(error: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``error``, also when a Ray task raised it remotely."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rerank-ray`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    from rerank_ray.logs import configure

    configure(quiet=quiet, verbose=getattr(args, "verbose", False))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if args.command == "submit":
            return _submit(args)
        if args.command == "cleanup":
            return _cleanup()
        if args.command == "export":
            return _export(args)
        if args.command == "compare":
            return _compare(args)
        config = config_from_args(args)
        from rerank_ray.pipeline import Pipeline

        metrics = None
        with Pipeline(config) as pipeline:  # holds the run directory until the stages end
            if args.command == "run":
                metrics = pipeline.run_all(resume=not getattr(args, "force", False))
            else:
                for stage in COMMANDS[args.command].stages:
                    result = getattr(pipeline, stage)()
                    if stage == "evaluate":
                        metrics = result
        if metrics is not None:
            _print_summary(config, metrics, pipeline.retrieval_depth())
        else:
            print(f"{args.command}: done; run directory {pipeline.run.root}")
    except Exception as error:
        user_error = _user_error_in(error)
        if user_error is None:
            raise
        print(f"rerank-ray: error: {user_error.shown_to_cli()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rerank-ray: interrupted; completed stages are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
