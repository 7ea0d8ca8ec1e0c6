"""``rerank-ray``: one parser → a typed :class:`RunConfig` → :mod:`rerank_ray.pipeline`.

Subcommands:
    run       every stage: prepare, embed, retrieve, rerank, evaluate
    embed     prepare the data and embed corpus and queries into a run directory
    retrieve  exact top-k over the run's embeddings
    rerank    rescore the run's retrieved passages with a cross-encoder, then evaluate
    evaluate  metrics.json, report.md and report.png from the run's rankings
    submit    any of the above as a Ray job on a cluster: rerank-ray submit --address URL -- run …

A stage run on an existing run directory takes the config recorded in its manifest;
options given on the command line override it.

Example:
    $ rerank-ray run --dataset ../shared/data/msmarco-dev/dev.jsonl --corpus-rows 5000 \\
        --num-queries 100 --embedder minilm --reranker none --out runs/seed
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rerank_ray.config import DEFAULT_EMBEDDER, DEFAULT_TOP_K, RunConfig
from rerank_ray.errors import UserError
from rerank_ray.rerank import DEFAULT_RERANKER

#: Parser destination → dotted path in :class:`RunConfig`.
OPTION_PATHS = {
    "dataset": "data.dataset",
    "split": "data.split",
    "corpus_rows": "data.corpus_rows",
    "num_queries": "data.num_queries",
    "corpus": "data.corpus",
    "queries": "data.queries",
    "qrels": "data.qrels",
    "embedder": "embedder",
    "pooling": "embedding.pooling",
    "query_max_length": "embedding.query_max_length",
    "passage_max_length": "embedding.passage_max_length",
    "query_instruction": "embedding.query_instruction",
    "normalize": "embedding.normalize",
    "batch_size": "embedding.batch_size",
    "max_tokens_per_batch": "embedding.max_tokens_per_batch",
    "embedding_storage": "embedding.storage",
    "reranker": "rerank.model",
    "rerank_top_k": "rerank.top_k",
    "reranker_max_length": "rerank.max_length",
    "reranker_batch_size": "rerank.batch_size",
    "top_k": "top_k",
    "address": "compute.address",
    "device": "compute.device",
    "num_actors": "compute.num_actors",
    "max_actors": "compute.max_actors",
    "num_gpus_per_actor": "compute.num_gpus_per_actor",
    "rows_per_call": "compute.rows_per_call",
    "corpus_embeddings": "corpus_embeddings",
    "query_embeddings": "query_embeddings",
    "cache_dir": "cache_dir",
    "use_cache": "use_cache",
}

STAGE_COMMANDS = {
    "run": ("prepare", "embed", "retrieve", "rerank", "evaluate"),
    "embed": ("prepare", "embed"),
    "retrieve": ("retrieve",),
    "rerank": ("rerank", "evaluate"),
    "evaluate": ("evaluate",),
}


def _options_parser() -> argparse.ArgumentParser:
    # Every default is SUPPRESS so that only options the user typed override a manifest.
    parser = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        metavar="SRC",
        help="namespace-Pt/msmarco schema: Hub name or .jsonl/.json/.parquet",
    )
    data.add_argument("--split", help="split of a Hub dataset (default: dev)")
    data.add_argument(
        "--corpus-rows", type=int, metavar="N", help="corpus = unique positives of the first N rows"
    )
    data.add_argument("--num-queries", type=int, metavar="M", help="queries = the first M rows")
    data.add_argument(
        "--corpus", metavar="SRC", help="collection.tsv (pid\\ttext), Parquet, JSONL or Hub corpus"
    )
    data.add_argument("--queries", metavar="SRC", help="queries.tsv (qid\\ttext)")
    data.add_argument("--qrels", metavar="SRC", help="TREC qrels: qid 0 pid relevance")
    model = parser.add_argument_group("embedding model")
    model.add_argument(
        "--embedder",
        metavar="MODEL",
        help=f"Hub name, local directory or 'minilm' (default: {DEFAULT_EMBEDDER})",
    )
    model.add_argument(
        "--pooling", choices=("cls", "mean"), help="default: from the model (1_Pooling), else cls"
    )
    model.add_argument("--query-max-length", type=int, metavar="TOKENS")
    model.add_argument("--passage-max-length", type=int, metavar="TOKENS")
    model.add_argument("--query-instruction", metavar="TEXT", help="text put before every query")
    model.add_argument(
        "--no-normalize", dest="normalize", action="store_false", help="keep vectors unnormalized"
    )
    model.add_argument(
        "--batch-size", type=int, metavar="N", help="most texts per forward pass (default: 64)"
    )
    model.add_argument(
        "--max-tokens-per-batch", type=int, metavar="N", help="most padded tokens per forward pass"
    )
    model.add_argument(
        "--embedding-storage",
        choices=("float32", "float16"),
        help="how vectors are stored: float16 halves the files and the search memory",
    )
    model.add_argument(
        "--corpus-embeddings",
        metavar="PATH",
        help="precomputed Parquet (pid, embedding): skip embedding the corpus",
    )
    model.add_argument(
        "--query-embeddings", metavar="PATH", help="precomputed Parquet (qid, embedding)"
    )
    model.add_argument(
        "--cache-dir", metavar="DIR", help="embedding cache (default: ~/.cache/rerank-ray)"
    )
    model.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        help="neither reuse nor store embeddings",
    )
    rerank = parser.add_argument_group("reranker")
    rerank.add_argument(
        "--reranker",
        metavar="MODEL",
        help="cross-encoder: Hub name, local directory, 'minilm-smoke' (tests only) or none"
        f" (default: {DEFAULT_RERANKER})",
    )
    rerank.add_argument(
        "--rerank-top-k", type=int, metavar="N", help="rerank the top N retrieved (default: all)"
    )
    rerank.add_argument(
        "--reranker-max-length", type=int, metavar="TOKENS", help="pair token limit (default: 512)"
    )
    rerank.add_argument(
        "--reranker-batch-size",
        type=int,
        metavar="N",
        help="most pairs per forward pass (default: 32)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help=f"passages retrieved per query (default: {DEFAULT_TOP_K})",
    )
    run.add_argument("--out", "--run", dest="out", metavar="RUN_DIR", help="the run directory")
    compute = parser.add_argument_group("compute")
    compute.add_argument("--address", help="existing Ray cluster; default: embedded local Ray")
    compute.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        help="auto (default): GPUs when the cluster has them or its autoscaler can launch"
        " them; cuda: always GPUs; cpu: never",
    )
    compute.add_argument(
        "--max-actors",
        type=int,
        metavar="N",
        help="most model replicas of the autoscaling pool (default: one per GPU the cluster"
        " has or can launch; one on CPUs)",
    )
    compute.add_argument(
        "--num-actors", type=int, metavar="N", help="a fixed number of model replicas instead"
    )
    compute.add_argument(
        "--num-gpus-per-actor", type=float, metavar="G", help="GPUs per replica (default: 1)"
    )
    compute.add_argument(
        "--rows-per-call", type=int, metavar="N", help="rows per actor call (default: 4096)"
    )
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
    helps = {
        "run": "run every stage",
        "embed": "prepare data and embed corpus and queries",
        "retrieve": "exact top-k over a run's embeddings",
        "rerank": "rerank a run's retrieved passages, then evaluate",
        "evaluate": "metrics and report from a run's retrieval (and rerank) results",
    }
    for name, text in helps.items():
        commands.add_parser(name, parents=[options], help=text, description=text)
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
    commands.add_parser(
        "cleanup",
        help="stop Ray processes left by local runs whose process was killed",
        description="Stop the Ray processes (agents, workers) that a local run's private Ray left"
        " running after the run was killed (e.g. SIGKILL); only processes recorded by such runs"
        " are stopped. Every local run does this too when it starts.",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Turn parsed options into a :class:`RunConfig`, on top of the run's manifest if any."""
    from rerank_ray.pipeline import load_config

    given = vars(args)
    if "out" not in given:
        raise UserError("--out RUN_DIR is required")
    base = None if args.command == "run" else load_config(given["out"])
    if base is None:
        base = RunConfig(out=given["out"])
    overrides = {OPTION_PATHS[k]: v for k, v in given.items() if k in OPTION_PATHS}
    overrides["out"] = given["out"]
    return base.updated(overrides)


def _print_summary(config: RunConfig, metrics: dict) -> None:
    from rerank_ray.metrics import DEFAULT_METRICS, depth_note, within_depth
    from rerank_ray.models import SMOKE_WARNING, is_smoke_model
    from rerank_ray.pipeline import RunDirectory
    from rerank_ray.report import metrics_table

    run = RunDirectory(config.out)
    print()
    print(f"embedder: {config.embedder}   reranker: {config.reranker}   top-k: {config.top_k}")
    print(metrics_table(metrics))
    _, deeper = within_depth(DEFAULT_METRICS, config.top_k)
    if deeper:
        print(f"NOTE: {depth_note(deeper, config.top_k)}")
    if config.reranks and is_smoke_model(config.reranker):
        print(f"NOTE: {SMOKE_WARNING}; the rerank row shows the machinery, not a result.")
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
        config = config_from_args(args)
        from rerank_ray.pipeline import Pipeline

        metrics = None
        with Pipeline(config) as pipeline:  # holds the run directory until the stages end
            if args.command == "run":
                metrics = pipeline.run_all(resume=not getattr(args, "force", False))
            else:
                for stage in STAGE_COMMANDS[args.command]:
                    result = getattr(pipeline, stage)()
                    if stage == "evaluate":
                        metrics = result
        if metrics is not None:
            _print_summary(config, metrics)
        else:
            print(f"{args.command}: done; run directory {pipeline.run.root}")
    except Exception as error:
        user_error = _user_error_in(error)
        if user_error is None:
            raise
        print(f"rerank-ray: error: {user_error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rerank-ray: interrupted; completed stages are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
