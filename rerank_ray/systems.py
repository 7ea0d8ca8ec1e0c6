"""Reranker systems: the name each reranker's results go by, its file in the run directory's
``rerank/`` folder, and the record that file keeps of what it was scored from.

A reranker's file (``rerank/<stem>.parquet``, with its exports beside it) holds, in its Parquet
metadata (:data:`KEY_METADATA`), the key it was scored with and the scoring statistics; the
rerank stage keeps a file only when that record is current (:func:`scored_with`).

Example:
    >>> system_name("BAAI/bge-reranker-large"), system_stem("bi:minilm")
    ('bge-reranker-large', 'bi_minilm')
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import pyarrow as pa

from rerank_ray.errors import DataError
from rerank_ray.io import exists, list_files, split

log = logging.getLogger("rerank_ray")

#: The one-reranker layout of earlier versions, in the run directory's root.
SINGLE_RERANKER_FILES = ("rerank.parquet", "rerank.trec")

#: The Parquet metadata entry of a rerank file that says what it was computed from.
KEY_METADATA = b"rerank_ray.scored"


def system_name(model: str) -> str:
    """The name a reranker's results go by (metrics.json, reports, its file): the model's
    folder or Hub repository name, ``bi:`` kept.

    Example:
        >>> [system_name(m) for m in ["BAAI/bge-reranker-large", "bi:minilm", "/models/ce/", "minilm-smoke"]]
        ['bge-reranker-large', 'bi:minilm', 'ce', 'minilm-smoke']
    """
    prefix = "bi:" if model.startswith("bi:") else ""
    return prefix + model[len(prefix) :].rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def system_stem(system: str) -> str:
    """A system's file name without suffix: its name with characters other than letters,
    digits, ``.``, ``_`` and ``-`` replaced by ``_``.

    Example:
        >>> system_stem("bi:minilm")
        'bi_minilm'
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", system)


def files_of_other_systems(rerank_dir: str, systems) -> list[str]:
    """The files in the ``rerank/`` folder that belong to none of ``systems`` (the scores or
    exports of rerankers a run no longer has)."""
    stems = {system_stem(system) for system in systems}
    return [p for p in list_files(rerank_dir) if split(p)[1].rsplit(".", 1)[0] not in stems]


def scored_with(path: str) -> dict | None:
    """What the rerank file at ``path`` records it was computed from (``key``, ``model``,
    ``stats``) and its ``rows``; ``None`` when it is missing, unreadable or records nothing."""
    from rerank_ray.parquet import parquet_rows, parquet_schema

    try:
        if not exists(path):
            return None
        metadata = parquet_schema(path).metadata or {}
        record = json.loads(metadata[KEY_METADATA])
        return {**record, "rows": parquet_rows(path)}
    except (OSError, KeyError, ValueError, pa.ArrowInvalid, DataError):
        return None


def reuse_or_score(
    systems: dict[str, str],
    paths: dict[str, str],
    keys: dict[str, str],
    pairs: int,
    score: Callable[[str, str, str, str], dict],
) -> dict:
    """The rerank stage's statistics: for each ``{system: model}``, its file's record when
    that records ``keys[system]`` and ``pairs`` rows (the file is kept), else
    ``score(system, model, path, key)``, which writes the file and returns its statistics."""
    found = {}
    for system, model in systems.items():
        recorded = scored_with(paths[system])
        if recorded and recorded["key"] == keys[system] and recorded["rows"] == pairs:
            log.info("rerank %s: scored with the same inputs before, kept", system)
            found[system] = {**recorded["stats"], "reused": True}
        else:
            found[system] = score(system, model, paths[system], keys[system])
    return {"systems": found, "rows": sum(stats["rows"] for stats in found.values())}
