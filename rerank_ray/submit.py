"""``rerank-ray submit``: run a command as a Ray job on a cluster, follow its logs, exit with its status.

A thin wrapper around Ray's :class:`~ray.job_submission.JobSubmissionClient`. The entrypoint is
the matching ``jobs/<stage>.py`` with the same options; local paths given to the command become
absolute, so a cluster on this machine (or one that mounts the same filesystem) finds them.

What travels (the job's ``working_dir``): the project, never the folder the command is run from.
By default that is the root of the installed project, the folder holding ``jobs/`` beside
``rerank_ray/`` (an installed wheel has no ``jobs/``: then ``--working-dir CHECKOUT`` is
required); an explicit ``--working-dir`` must hold ``jobs/<stage>.py``. Ray zips that folder
itself; three rules keep files out, all matched by Ray as gitignore-style patterns relative to
the working dir (a pattern without ``/`` matches at any depth):

* :data:`EXCLUDES`: environments, outputs, caches, version control (useless on the cluster);
* :data:`SECRETS`: ``.env`` files, private keys and certificates, credential files and folders
  (a job must get its secrets from the cluster, never from a copy of a developer's folder);
* the working dir's ``.gitignore``: Ray reads the ``.gitignore`` of every folder it packs unless
  ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1`` (``.rayignore`` files always); the top-level
  ``.gitignore``'s patterns are also passed as excludes, so that rule holds whatever the
  environment says.

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
from pathlib import Path

from rerank_ray.errors import ConfigError
from rerank_ray.io import absolute_if_local, is_uri
from rerank_ray.stages import COMMANDS

#: What never travels with the job: environments, outputs, caches, version control.
EXCLUDES = [".venv", "runs", ".git", ".pytest_cache", ".ruff_cache", "__pycache__", "*.egg-info"]
#: What must never leave the machine: environment files, private keys, certificates, credentials.
SECRETS = [
    ".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "*.keystore", "*.jks",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    ".netrc", ".git-credentials", ".pypirc", ".pgpass",
    "application_default_credentials.json",
    ".aws/", ".ssh/", ".gnupg/", ".kube/", ".docker/", ".azure/",
]  # fmt: skip


def _absolute(option: str, value: str) -> str:
    """Make a local path absolute: the job runs in a copy of the checkout, elsewhere. An
    output folder (the run directory, the cache) always is; an input only if it exists here
    (``--embedder BAAI/bge-m3`` is a Hub name)."""
    from rerank_ray.config import RunConfig
    from rerank_ray.options import flags_of

    outputs = {*flags_of(RunConfig, "out"), *flags_of(RunConfig, "cache_dir")}
    if option in outputs and not is_uri(value):
        return os.path.abspath(value)
    return absolute_if_local(value)


def job_arguments(command: Sequence[str]) -> list[str]:
    """``[stage, options…]`` → the job's entrypoint command line, paths made absolute."""
    from rerank_ray.config import RunConfig
    from rerank_ray.options import path_flags

    if not command or command[0] not in COMMANDS:
        raise ConfigError("give the command to run after '--': one of " + ", ".join(COMMANDS))
    stage, options = command[0], list(command[1:])
    path_options = path_flags(RunConfig)
    converted = []
    for index, value in enumerate(options):
        previous = options[index - 1] if index else ""
        if previous in path_options:
            value = _absolute(previous, value)
        elif "=" in value and value.split("=", 1)[0] in path_options:
            option, _, path = value.partition("=")
            value = f"{option}={_absolute(option, path)}"
        converted.append(value)
    return ["python", COMMANDS[stage].entrypoint, *converted]


def project_root() -> Path:
    """The installed project's root: the folder holding ``rerank_ray/`` and ``jobs/``."""
    import rerank_ray

    root = Path(rerank_ray.__file__).resolve().parent.parent
    if not (root / "jobs").is_dir():
        raise ConfigError(
            f"the installed rerank_ray ({root / 'rerank_ray'}) has no jobs/ beside it;"
            " pass --working-dir with the rerank-ray checkout to send"
        )
    return root


def job_working_dir(script: str, working_dir: str | None = None) -> Path:
    """The folder to send: ``working_dir`` if given, else :func:`project_root`; it must hold ``script``."""
    if working_dir is None:
        root = project_root()
        if not (root / script).is_file():
            raise ConfigError(f"{root / script} is missing; pass --working-dir with the checkout")
        return root
    root = Path(working_dir).resolve()
    if not (root / script).is_file():
        raise ConfigError(
            f"--working-dir {working_dir}: no {script} there;"
            " give the rerank-ray checkout (the folder holding jobs/ and rerank_ray/)"
        )
    return root


def upload_excludes(root: Path) -> list[str]:
    """Ray ``excludes`` for ``root``: its ``.gitignore``'s patterns, then EXCLUDES and SECRETS.

    Later patterns win in a gitignore pattern list, so a ``!pattern`` in ``.gitignore`` cannot
    bring back a secret or an excluded folder.
    """
    gitignore = root / ".gitignore"
    patterns = gitignore.read_text().splitlines() if gitignore.is_file() else []
    return [*patterns, *EXCLUDES, *SECRETS]


def submit(
    address: str,
    command: Sequence[str],
    working_dir: str | None = None,
    wait: bool = True,
) -> int:
    """Submit ``command`` (``run …``, ``rerank …``) as a Ray job; follow it unless ``wait`` is off.

    The job's working dir is :func:`job_working_dir`, which Ray packs without
    :func:`upload_excludes`; it is checked before the job server is contacted.

    Returns:
        0 when the job succeeded (or was submitted, without ``wait``), 1 otherwise.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    entrypoint = shlex.join(job_arguments(command))
    root = job_working_dir(COMMANDS[command[0]].entrypoint, working_dir)
    try:
        client = JobSubmissionClient(address)
    except Exception as error:  # connection and authentication errors of many types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot reach the Ray job server at {address}: {first}") from None
    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={
            "working_dir": str(root),
            "excludes": upload_excludes(root),
            "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"},
        },
    )
    print(
        f"rerank-ray: submitted job {job_id} (working dir {root}): {entrypoint}",
        file=sys.stderr,
        flush=True,
    )
    if not wait:
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"rerank-ray: job {job_id} {status.value.lower()}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1
