"""The content-keyed embedding cache: embeddings that need not be computed twice.

An embedding directory is reused when its key matches: the model's weights fingerprint, the
options that change the vectors (pooling, max length, instruction, normalization, dtype), the
role, and the content hash of the texts. Anything else (batch sizes, actor counts) does not
change the vectors and is not in the key. Vectors supplied by the user are imported and
checked by :mod:`rerank_ray.supplied`.

Example:
    >>> key = embedding_key("sha256:ab", {"pooling": "cls"}, "corpus", "sha256:cd", "float32")
    >>> len(key)
    64
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from rerank_ray.io import (
    atomic_path,
    copy_tree,
    discard,
    exists,
    is_dir,
    join,
    makedirs,
    open_binary,
    open_output,
    read_json,
    resolve,
    write_json,
)
from rerank_ray.parquet import parquet_files, parquet_rows, parquet_schema

#: Bumped when the stored layout changes, so old entries are not read as new ones.
CACHE_FORMAT = 2

log = logging.getLogger("rerank_ray")


def embedding_key(fingerprint: str, options: dict, role: str, content_hash: str, dtype: str) -> str:
    """The cache key of one embedding table (hex SHA-256 of its inputs)."""
    payload = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "options": options,
        "role": role,
        "content": content_hash,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """Embedding directories under ``root/embeddings/<key>/`` (other kinds of content-keyed
    directories, such as BM25 indexes, under ``root/<kind>/<key>/``), each published
    atomically.

    ``root`` is a local directory (the driver's disk: ``--cache-dir`` also holds built
    models). Entries are copied in from, and out to, run directories on any filesystem of
    :mod:`rerank_ray.io`, object stores included: a run never shares a file with the cache.

    An entry is trusted only as far as its metadata (:data:`ENTRY_METADATA`, written inside
    it before it is published) vouches for it: the same files, sizes and SHA-256 checksums,
    and the row count its reader expects. A bad entry is removed and its vectors recomputed.
    """

    def __init__(self, root: str, kind: str = "embeddings"):
        self.root = join(root, kind)

    @classmethod
    def usable(cls, root: str) -> EmbeddingCache | None:
        """The cache at ``root`` if entries can be stored there, else ``None`` after one
        warning naming ``root`` (the run then goes on without a cache)."""
        cache = cls(root)
        problem = cache.probe()
        if problem is None:
            return cache
        log.warning("embedding cache %s is not writable (%s): running without it", root, problem)
        return None

    def probe(self) -> str | None:
        """Why entries cannot be stored here, or ``None``: creates the entries directory and a
        temporary file in it, as :meth:`store` will."""
        probe = join(self.root, f".probe-{uuid.uuid4().hex[:8]}")
        try:
            makedirs(self.root)
            with open_output(probe):
                pass
        except OSError as error:
            return _one_line(error)
        discard(probe)
        return None

    def path(self, key: str) -> str:
        return join(self.root, key)

    def lookup(self, key: str, rows: int) -> str | None:
        """The entry under ``key`` if it verifies with ``rows`` rows (:func:`entry_problem`).

        A bad entry is removed (it is the cache's own), said in one warning, and ``None``
        returned, so its vectors are computed again.
        """
        path = self.path(key)
        if not exists(path):
            return None
        problem = entry_problem(path, rows)
        if problem is None:
            return path
        log.warning("embedding cache: removed the bad entry %s (%s); recomputing it", path, problem)
        discard(path)
        return None

    def store(self, key: str, source_dir: str) -> str | None:
        """Put a copy of ``source_dir`` under ``key``, with its metadata (a no-op if a sound
        entry is there already); ``None`` after one warning if the cache could not be written
        (the run keeps its own vectors either way)."""
        path = self.path(key)
        if is_dir(path) and entry_problem(path, None) is None:
            return path
        try:
            makedirs(self.root)
            with atomic_path(path) as tmp:
                copy_tree(source_dir, tmp)
                write_json(join(tmp, ENTRY_METADATA), describe_entry(tmp))
        except OSError as error:
            log.warning("embedding cache: %s not stored (%s)", path, _one_line(error))
            return None
        return path


#: The metadata file of an entry. Hidden, so copies into runs leave it out and Parquet
#: readers skip it.
ENTRY_METADATA = ".entry.json"


def describe_entry(path: str) -> dict:
    """The metadata of the entry directory ``path``: format, rows, embedding dimension, and
    per file (every file but the metadata) its size and SHA-256."""
    files = {
        name: {"bytes": size, "sha256": _sha256(join(path, name))}
        for name, size in sorted(_entry_files(path).items())
    }
    return {
        "format": CACHE_FORMAT,
        "rows": parquet_rows(path) if parquet_files(path) else 0,
        "dimension": _dimension(path),
        "files": files,
    }


def entry_problem(path: str, rows: int | None) -> str | None:
    """Why the entry at ``path`` cannot be trusted, or ``None`` if it can.

    It can when its metadata is there and of this :data:`CACHE_FORMAT`, records ``rows``
    rows (unless ``rows`` is ``None``), lists exactly the files present, and each file has
    the size and SHA-256 recorded. Sizes are compared before any file is read.
    """
    try:
        metadata = read_json(join(path, ENTRY_METADATA))
    except FileNotFoundError:
        return "no metadata"
    except (OSError, ValueError) as error:
        return f"unreadable metadata: {_one_line(error)}"
    try:
        if metadata["format"] != CACHE_FORMAT:
            return f"metadata of format {metadata['format']}, not {CACHE_FORMAT}"
        if rows is not None and metadata["rows"] != rows:
            return f"{metadata['rows']} rows, expected {rows}"
        recorded = {name: (f["bytes"], f["sha256"]) for name, f in metadata["files"].items()}
    except (KeyError, TypeError, AttributeError) as error:
        return f"malformed metadata: {error!r}"
    present = _entry_files(path)
    if set(present) != set(recorded):
        added, missing = sorted(set(present) - set(recorded)), sorted(set(recorded) - set(present))
        return f"files not as recorded (added: {added or 'none'}, missing: {missing or 'none'})"
    for name in sorted(recorded):
        if present[name] != recorded[name][0]:
            return f"{name} has {present[name]} bytes, {recorded[name][0]} were stored"
    for name in sorted(recorded):
        if _sha256(join(path, name)) != recorded[name][1]:
            return f"{name}: SHA-256 differs from the stored one"
    return None


def _entry_files(path: str) -> dict[str, int]:
    """Name and size of everything in entry directory ``path`` but its metadata (a
    subdirectory has size -1: no entry has one, so it never matches)."""
    filesystem, inner = resolve(path)
    found = {}
    for info in filesystem.get_file_info(pafs.FileSelector(inner)):
        name = posixpath.basename(info.path)
        if name != ENTRY_METADATA:
            found[name] = info.size if info.type == pafs.FileType.File else -1
    return found


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open_binary(path) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _dimension(path: str) -> int | None:
    """The width of the ``embedding`` column of the entry's first Parquet file, if any."""
    files = parquet_files(path)
    if not files:
        return None
    schema = parquet_schema(files[0])
    if "embedding" not in schema.names:
        return None
    kind = schema.field("embedding").type
    return kind.list_size if pa.types.is_fixed_size_list(kind) else None


def _one_line(error: BaseException) -> str:
    """An error's message on one line (Arrow's may span several)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
