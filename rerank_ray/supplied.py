"""Supplied embeddings: vectors the user computed, checked and imported into a run.

Supplied vectors (``--corpus-embeddings``, ``--query-embeddings``) are Parquet files with an
id column and an ``embedding`` column. Their dimension is checked from the files' footers
before any work (:func:`supplied_dimension`); they are then streamed once into the run,
checked as they pass (one dimension, finite values), and their ids compared with the
normalized table's on Ray Data (:func:`check_ids`), so that each id of the table has exactly
one vector and no other id has one.

Example::

    from rerank_ray.supplied import import_embeddings
    import_embeddings("mine/", "run/data/corpus.parquet", "pid", "run/embeddings/corpus")
    # 5000
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rerank_ray.embed import to_fixed_size_list
from rerank_ray.errors import DataError
from rerank_ray.io import atomic_path, exists, is_dir, join, makedirs
from rerank_ray.parquet import (
    iter_parquet_batches,
    parquet_files,
    parquet_schema,
    parquet_writer,
    read_dataset,
)


def _embedding_files(path: str) -> list[str]:
    if is_dir(path):
        files = parquet_files(path)
        if not files:
            raise DataError(f"{path}: no .parquet files")
        return files
    if not exists(path):
        raise DataError(f"{path}: no such file or directory")
    return [path]


def _vectors(column: pa.Array, where: str, first_row: int = 0) -> np.ndarray:
    """A list or fixed-size-list column of numbers as a 2-D float32 array (``first_row``:
    the file's row number of its first value, 0-based, for messages)."""
    kind = column.type
    if column.null_count and (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        row = first_row + int(np.argmax(column.is_null().to_numpy(zero_copy_only=False))) + 1
        raise DataError(f"{where}, row {row}: embedding is empty (null)")
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
        values = column.flatten()
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc_list_lengths(column)
        if len(lengths) and (lengths.min() != lengths.max()):
            bad = int(np.argmax(lengths != lengths[0]))
            raise DataError(
                f"{where}, row {first_row + bad + 1}: embedding has {lengths[bad]} values,"
                f" expected {lengths[0]}"
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


def check_dimensions(
    corpus: str | None, queries: str | None, embedder: tuple[str, int | None] | None = None
) -> None:
    """Refuse supplied vectors that are not Parquet with an id column and ``embedding``, or
    whose dimension differs from the other role's: the other supplied vectors, or, where one
    role is computed, ``embedder`` (its name and dimension; ``None`` when unknown).

    Reads the files' footers only, so it runs before Ray starts.
    """
    supplied = [
        (path, supplied_dimension(path, id_column), f"the {role} embeddings in {path}")
        for role, id_column, path in (("corpus", "pid", corpus), ("query", "qid", queries))
        if path
    ]
    if len(supplied) == 1 and embedder is not None and embedder[1]:
        other = "query" if corpus else "corpus"
        supplied.append((None, embedder[1], f"the {other} vectors of the embedder {embedder[0]}"))
    if len(supplied) == 2 and supplied[0][1] != supplied[1][1]:
        (path, dimension, _), (_, other_dimension, other) = supplied
        raise DataError(
            f"{path}: {dimension}-dimensional embeddings, but {other} have"
            f" {other_dimension} dimensions"
        )


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
        vectors = _vectors(batch.column("embedding"), path, row)
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
        stored = to_fixed_size_list(vectors, storage)
        # A finite float32 value can overflow the storage type (float16 ends at 65,504).
        kept = np.isfinite(stored.flatten().to_numpy().reshape(vectors.shape)).all(axis=1)
        if not kept.all():
            bad = int(np.argmin(kept))
            raise DataError(
                f"{path}, row {row + bad + 1}: embedding of {ids[bad]} has values beyond"
                f" {storage}'s range (largest {np.finfo(storage).max:g}); store float32"
            )
        table = pa.table({id_column: pa.array(ids, pa.string()), "embedding": stored})
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
    from rerank_ray.raydata import iter_sorted_groups

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
