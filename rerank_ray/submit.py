"""``rerank-ray submit``: run a command as a Ray job on a cluster, follow its logs, exit with its status.

A thin wrapper around Ray's :class:`~ray.job_submission.JobSubmissionClient`: the checkout is
the job's working directory (without the virtualenv, runs and caches), the entrypoint is the
matching ``jobs/<stage>.py`` with the same options, and local paths given to the command
become absolute, so a cluster on this machine (or one that mounts the same filesystem) finds
them.

Example:
    $ rerank-ray submit --address http://127.0.0.1:8265 -- run --dataset dev.jsonl \\
        --embedder minilm --reranker none --out runs/job
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Sequence

from rerank_ray.errors import ConfigError

#: What never travels with the job: environments, outputs, caches, version control.
EXCLUDES = [".venv", "runs", ".git", ".pytest_cache", ".ruff_cache", "__pycache__", "*.egg-info"]
ENTRYPOINTS = {
    "run": "jobs/pipeline.py",
    "embed": "jobs/embed.py",
    "retrieve": "jobs/retrieve.py",
    "rerank": "jobs/rerank.py",
    "evaluate": "jobs/evaluate.py",
}
PATH_OPTIONS = {
    "--dataset", "--corpus", "--queries", "--qrels", "--out", "--run",
    "--corpus-embeddings", "--query-embeddings", "--cache-dir", "--embedder", "--reranker",
}  # fmt: skip


def _absolute(option: str, value: str) -> str:
    """Make a local path absolute: the job runs in a copy of the checkout, elsewhere."""
    if "://" in value:
        return value
    if option in ("--out", "--run", "--cache-dir") or os.path.exists(value):
        return os.path.abspath(value)
    return value


def job_arguments(command: Sequence[str]) -> list[str]:
    """``[stage, options…]`` → the job's entrypoint command line, paths made absolute."""
    if not command or command[0] not in ENTRYPOINTS:
        raise ConfigError("give the command to run after '--': one of " + ", ".join(ENTRYPOINTS))
    stage, options = command[0], list(command[1:])
    converted = []
    for index, value in enumerate(options):
        previous = options[index - 1] if index else ""
        if previous in PATH_OPTIONS:
            value = _absolute(previous, value)
        elif "=" in value and value.split("=", 1)[0] in PATH_OPTIONS:
            option, _, path = value.partition("=")
            value = f"{option}={_absolute(option, path)}"
        converted.append(value)
    return ["python", ENTRYPOINTS[stage], *converted]


def submit(
    address: str,
    command: Sequence[str],
    working_dir: str = ".",
    wait: bool = True,
) -> int:
    """Submit ``command`` (``run …``, ``rerank …``) as a Ray job; follow it unless ``wait`` is off.

    Returns:
        0 when the job succeeded (or was submitted, without ``wait``), 1 otherwise.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    entrypoint = shlex.join(job_arguments(command))
    try:
        client = JobSubmissionClient(address)
    except Exception as error:  # connection and authentication errors of many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot reach the Ray job server at {address}: {first}") from None
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={
            "working_dir": os.path.abspath(working_dir),
            "excludes": EXCLUDES,
            "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"},
        },
    )
    print(f"rerank-ray: submitted job {job_id}: {entrypoint}", file=sys.stderr, flush=True)
    if not wait:
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"rerank-ray: job {job_id} {status.value.lower()}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1
