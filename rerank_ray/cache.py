"""Embeddings that need not be computed twice: the content-keyed cache and imported vectors.

An embedding directory is reused when its key matches: the model's weights fingerprint, the
options that change the vectors (pooling, max length, instruction, normalization, dtype), the
role, and the content hash of the texts. Anything else (batch sizes, actor counts) does not
change the vectors and is not in the key.

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
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from rerank_ray.embed import to_fixed_size_list
from rerank_ray.errors import DataError
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
from rerank_ray.parquet import (
    iter_parquet_batches,
    parquet_files,
    parquet_rows,
    parquet_schema,
    parquet_writer,
    read_dataset,
)
from rerank_ray.raydata import iter_sorted_groups

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
    """Embedding directories under ``root/embeddings/<key>/``, each published atomically.

    ``root`` is a local directory (the driver's disk: ``--cache-dir`` also holds built
    models). Entries are copied in from, and out to, run directories on any filesystem of
    :mod:`rerank_ray.io`, object stores included: a run never shares a file with the cache.

    An entry is trusted only as far as its metadata (:data:`ENTRY_METADATA`, written inside
    it before it is published) vouches for it: the same files, sizes and SHA-256 checksums,
    and the row count its reader expects. A bad entry is removed and its vectors recomputed.
    """

    def __init__(self, root: str):
        self.root = join(root, "embeddings")

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


def _embedding_files(path: str) -> list[str]:
    if is_dir(path):
        files = parquet_files(path)
        if not files:
            raise DataError(f"{path}: no .parquet files")
        return files
    if not exists(path):
        raise DataError(f"{path}: no such file or directory")
    return [path]


def _vectors(column: pa.Array, where: str) -> np.ndarray:
    """A list or fixed-size-list column of numbers as a 2-D float32 array."""
    kind = column.type
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
        values = column.flatten()
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc_list_lengths(column)
        if len(lengths) and (lengths.min() != lengths.max()):
            row = int(np.argmax(lengths != lengths[0])) + 1
            raise DataError(
                f"{where}, row {row}: embedding has {lengths[row - 1]} values, expected {lengths[0]}"
            )
        width = int(lengths[0]) if len(lengths) else 0
        values = column.flatten()
    else:
        raise DataError(f"{where}: column 'embedding' must be a list of floats, got {kind}")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise DataError(f"{where}: column 'embedding' must hold numbers, got {values.type}")
    if column.null_count:
        raise DataError(f"{where}: column 'embedding' has empty (null) rows")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)


def pc_list_lengths(column: pa.Array) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.list_value_length(column).to_numpy(zero_copy_only=False)


def _supplied_schema(path: str, id_column: str) -> pa.Schema:
    """A supplied file's schema, which must have ``id_column`` and ``embedding``."""
    schema = parquet_schema(path)
    for column in (id_column, "embedding"):
        if column not in schema.names:
            raise DataError(f"{path}: missing column '{column}' (has {', '.join(schema.names)})")
    return schema


def supplied_dimension(source: str, id_column: str) -> int:
    """Check that supplied embeddings can be imported and return their dimension, reading
    only Parquet footers and the first vector: run before any work, so that a file that is
    not Parquet, lacks a column or has no rows is refused in one line at once.

    Raises:
        DataError: naming the file.
    """
    for path in _embedding_files(source):
        schema = _supplied_schema(path, id_column)
        kind = schema.field("embedding").type
        if pa.types.is_fixed_size_list(kind):
            return kind.list_size
        for batch in iter_parquet_batches(path, columns=["embedding"], batch_size=1):
            if batch.num_rows:
                return _vectors(batch.column("embedding"), path).shape[1]
    raise DataError(f"{source}: no embeddings (no rows)")


def import_embeddings(
    source: str, table_path: str, id_column: str, target_dir: str, storage: str = "float32"
) -> int:
    """Check user-supplied embeddings against a normalized table and write them to the run.

    Each id of the table must have exactly one finite vector, all of one dimension. The
    vectors stream through once, a batch at a time, and are checked and written as they pass;
    the ids are then compared with the table's by :func:`check_ids` on Ray Data, so neither
    the table's ids nor the supplied ones are held in the driver.

    Args:
        source: A Parquet file or a directory of them, with ``id_column`` and ``embedding``.
        table_path: The normalized ``corpus`` or ``queries`` table they belong to.
        id_column: ``pid`` or ``qid``.
        target_dir: The run's embeddings directory (published atomically).
        storage: ``float32`` or ``float16``, as the run stores vectors.

    Returns:
        The number of vectors.

    Raises:
        DataError: naming the file and row of a missing column, a dimension mismatch, a
            non-finite value, a duplicate id, or an id that is not (or a table id that is not
            covered) in the table.
    """
    files = _embedding_files(source)
    rows = 0
    dimension = None
    with atomic_path(target_dir) as tmp:
        makedirs(tmp)
        for file_index, path in enumerate(files):
            out = join(tmp, f"part-{file_index:05d}.parquet")
            written, dimension = _import_file(path, id_column, out, storage, dimension)
            rows += written
        if rows == 0:
            raise DataError(f"{source}: no embeddings (no rows)")
        # Arrow's allocator keeps what the pass over the vectors freed; released here, the
        # driver's peak does not carry it into the id check.
        pa.default_memory_pool().release_unused()
        problems = check_ids(table_path, tmp, id_column)
        if problems.unknown or problems.repeated:
            raise DataError(_first_bad_row(files, id_column, table_path, problems))
        if problems.missing:
            raise DataError(
                f"{source}: {problems.missing} {id_column}s of {table_path} have no embedding"
                f" (e.g. {problems.missing_example})"
            )
    return rows


def _import_file(
    path: str, id_column: str, out: str, storage: str, dimension: int | None
) -> tuple[int, int | None]:
    """Check and convert one supplied file, batch by batch; returns (rows, dimension)."""
    _supplied_schema(path, id_column)
    row = 0
    writer = None
    for batch in iter_parquet_batches(path, columns=[id_column, "embedding"]):
        ids = [str(i) for i in batch.column(id_column).to_pylist()]
        vectors = _vectors(batch.column("embedding"), path)
        if dimension is None:
            dimension = vectors.shape[1]
        if vectors.shape[1] != dimension:
            raise DataError(
                f"{path}: embeddings have {vectors.shape[1]} dimensions, earlier ones {dimension}"
            )
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise DataError(
                f"{path}, row {row + bad + 1}: embedding of {ids[bad]} has NaN or infinite values"
            )
        table = pa.table(
            {
                id_column: pa.array(ids, pa.string()),
                "embedding": to_fixed_size_list(vectors, storage),
            }
        )
        if writer is None:
            writer = parquet_writer(out, table.schema)
        writer.write_table(table)
        row += batch.num_rows
    if writer is not None:
        writer.close()
    return row, dimension


@dataclass(frozen=True)
class IdProblems:
    """What :func:`check_ids` found: a sample of bad ids and the count of missing ones."""

    unknown: set[str]
    repeated: set[str]
    missing: int
    missing_example: str | None


#: Bad ids brought back to the driver to name a row (all of them could be the corpus).
ID_PROBLEM_SAMPLE = 1000


def check_ids(table_path: str, supplied_path: str, id_column: str) -> IdProblems:
    """Compare the ids of supplied vectors with a table's, on Ray Data (a sort by id).

    Both tables' ids stream into Ray Data's sort as ``(id, in_table, supplied)`` rows; each
    sorted block is reduced to its ids whose counts are not 1 and 1 (and its edge ids, which
    may go on in the next block), and the driver reads these in id order, one id at a time.
    It keeps at most :data:`ID_PROBLEM_SAMPLE` bad ids of each kind and the count of missing
    ones, so its memory does not grow with the table (see
    :func:`rerank_ray.raydata.iter_sorted_groups`).

    Example::

        check_ids("data/corpus.parquet", "mine/", "pid").missing
        # 0
    """

    def ids(path: str, in_table: int):
        return (
            read_dataset(path)
            .select_columns([id_column])
            .map_batches(_tagged_ids, fn_kwargs={"in_table": in_table}, batch_format="pyarrow")
        )

    def both():
        return ids(table_path, 1).union(ids(supplied_path, 0))

    unknown: set[str] = set()
    repeated: set[str] = set()
    missing, missing_example = 0, None
    for group in iter_sorted_groups(both, "id", _id_counts_of_interest):
        identifier = group[0]["id"]
        in_table = sum(row["in_table"] for row in group)
        supplied = sum(row["supplied"] for row in group)
        if in_table == 0 and len(unknown) < ID_PROBLEM_SAMPLE:
            unknown.add(identifier)
        if supplied > 1 and len(repeated) < ID_PROBLEM_SAMPLE:
            repeated.add(identifier)
        if in_table and not supplied:
            missing += 1
            if missing_example is None:
                missing_example = identifier  # the first in id order
    return IdProblems(unknown, repeated, missing, missing_example)


def _tagged_ids(batch: pa.Table, in_table: int) -> pa.Table:
    """``(id, in_table, supplied)``: one row per id, counted after the sort."""
    ones = pa.array(np.ones(batch.num_rows, dtype=np.int64))
    zeros = pa.array(np.zeros(batch.num_rows, dtype=np.int64))
    return pa.table(
        {
            "id": batch.column(0).cast(pa.string()),
            "in_table": ones if in_table else zeros,
            "supplied": zeros if in_table else ones,
        }
    )


def _id_counts_of_interest(block: pa.Table) -> pa.Table:
    """The ids of an id-sorted block with their counts summed, keeping those that are not
    1 and 1 (in the table, supplied), and the first and last (they may go on in the next
    block)."""
    if block.num_rows == 0:
        return block
    # Without threads, group_by keeps the order of first appearance: here, the sort order.
    counts = block.group_by("id", use_threads=False).aggregate(
        [("in_table", "sum"), ("supplied", "sum")]
    )
    counts = pa.table(
        {
            "id": counts.column("id"),
            "in_table": counts.column("in_table_sum"),
            "supplied": counts.column("supplied_sum"),
        }
    )
    keep = (counts.column("in_table").to_numpy() != 1) | (counts.column("supplied").to_numpy() != 1)
    keep[[0, -1]] = True
    return counts.filter(pa.array(keep))


def _first_bad_row(files: list[str], id_column: str, table_path: str, problems: IdProblems) -> str:
    """The message for the first supplied row whose id is unknown or repeated.

    Only runs on that error: it re-reads the ids of the supplied files in order, holding the
    sampled bad ids and the repeated ones seen so far.
    """
    seen: set[str] = set()
    for path in files:
        row = 0
        for batch in iter_parquet_batches(path, columns=[id_column]):
            for identifier in (str(i) for i in batch.column(id_column).to_pylist()):
                row += 1
                if identifier in problems.unknown:
                    return f"{path}, row {row}: {id_column} {identifier} is not in {table_path}"
                if identifier in problems.repeated:
                    if identifier in seen:
                        return f"{path}, row {row}: {id_column} {identifier} appears twice"
                    seen.add(identifier)
    return f"{files[0]}: {id_column}s not in {table_path} or repeated"
