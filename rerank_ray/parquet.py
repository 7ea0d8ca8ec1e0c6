"""Parquet tables on local disks and object stores, read and written directly or through
Ray Data.

A table is one Parquet file or a directory of them (:func:`parquet_files`); paths resolve
to their filesystem as in :mod:`rerank_ray.io`. Writes here are not atomic: callers
publish them with :func:`rerank_ray.io.atomic_path` or :func:`rerank_ray.io.publish`. Ray
Data reads are planned in read tasks of about :data:`READ_TASK_BYTES`, so what a task
holds does not grow with the table.

Example::

    parquet_files("s3://bucket/runs/seed/embeddings/corpus")
    # ['s3://bucket/runs/seed/embeddings/corpus/part-000000-0000.parquet', ...]
    read_dataset("s3://bucket/runs/seed/data/corpus.parquet").count()
    # 5000
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rerank_ray.errors import DataError
from rerank_ray.io import join, open_input, resolve


def parquet_files(path: str) -> list[str]:
    """The files of a Parquet table: ``path`` itself, or a directory's ``.parquet`` files in
    name order, without the hidden ones (``.`` or ``_``, which Ray Data and Arrow skip too).

    Example:
        >>> import os, tempfile
        >>> table = tempfile.mkdtemp()
        >>> for name in ("part-1.parquet", "part-0.parquet", ".part-2.parquet.tmp-1a2b"):
        ...     pq.write_table(pa.table({"pid": ["p"]}), os.path.join(table, name))
        >>> [os.path.basename(f) for f in parquet_files(table)]
        ['part-0.parquet', 'part-1.parquet']
    """
    filesystem, inner = resolve(path)
    if filesystem.get_file_info(inner).type != pafs.FileType.Directory:
        return [path]
    names = (
        posixpath.basename(info.path)
        for info in filesystem.get_file_info(pafs.FileSelector(inner))
        if info.type == pafs.FileType.File
    )
    return sorted(
        join(path, name)
        for name in names
        if name.endswith(".parquet") and not name.startswith((".", "_"))
    )


def _unreadable(path: str, error: Exception) -> DataError:
    """The one-line error for a file that is not a readable Parquet file, with Arrow's reason."""
    text = str(error).strip()
    reason = text.splitlines()[0] if text else "unreadable"
    return DataError(f"{path}: not a readable Parquet file ({reason})")


def parquet_rows(path: str) -> int:
    """The row count of a Parquet table (:func:`parquet_files`), from the files' footers.

    Raises:
        DataError: one line naming the first file that is not a readable Parquet file.
    """
    total = 0
    for file in parquet_files(path):
        filesystem, inner = resolve(file)
        try:
            total += pq.read_metadata(inner, filesystem=filesystem).num_rows
        except pa.ArrowInvalid as error:
            raise _unreadable(file, error) from None
    return total


def parquet_schema(path: str) -> pa.Schema:
    """The schema of a Parquet file, from its footer.

    Raises:
        DataError: one line, when ``path`` is not a readable Parquet file.
    """
    filesystem, inner = resolve(path)
    try:
        return pq.read_schema(inner, filesystem=filesystem)
    except pa.ArrowInvalid as error:
        raise _unreadable(path, error) from None


def iter_parquet_batches(
    path: str, columns: list[str] | None = None, batch_size: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet table (:func:`parquet_files`), file by file in name order.

    Row group by row group: one ``iter_batches`` over a whole file holds memory that grows
    with the file.

    Raises:
        DataError: one line naming a file that is not a readable Parquet file.
    """
    for file in parquet_files(path):
        with open_input(file) as handle:
            try:
                parquet = pq.ParquetFile(handle)
            except pa.ArrowInvalid as error:
                raise _unreadable(file, error) from None
            with parquet:
                for group in range(parquet.num_row_groups):
                    yield from parquet.iter_batches(
                        batch_size=batch_size, row_groups=[group], columns=columns
                    )


def read_table(path: str, **kwargs) -> pa.Table:
    """A whole Parquet table (a file, or a directory's files); ``kwargs`` go to
    ``pyarrow.parquet.read_table`` (``columns=``, ``schema=``).

    Raises:
        DataError: one line naming a file of the table that is not a readable Parquet file,
            or that lacks one of ``columns``.
    """
    filesystem, inner = resolve(path)
    try:
        return pq.read_table(inner, filesystem=filesystem, **kwargs)
    except pa.ArrowInvalid:
        # Arrow's error does not say which file; the footers do, read only on failure.
        for file in parquet_files(path):
            names = parquet_schema(file).names
            missing = [c for c in kwargs.get("columns") or () if c not in names]
            if missing:
                raise DataError(f"{file}: missing column {missing[0]!r}") from None
        raise


def write_table(table: pa.Table, path: str) -> None:
    """Write ``table`` as one Parquet file at ``path`` (not atomic: see
    :func:`rerank_ray.io.atomic_path`)."""
    filesystem, inner = resolve(path)
    pq.write_table(table, inner, filesystem=filesystem)


def parquet_writer(path: str, schema: pa.Schema) -> pq.ParquetWriter:
    """A ``ParquetWriter`` appending row groups to the file at ``path``."""
    filesystem, inner = resolve(path)
    return pq.ParquetWriter(inner, schema, filesystem=filesystem)


#: In-memory bytes of Parquet per Ray Data read task. Ray 2.60 packs whole row groups into
#: read tasks of up to 128 MiB (``RAY_DATA_PARQUET_BIN_PACKING_BYTES``, counted after column
#: pruning; ``override_num_blocks`` does not split them), and a task's memory follows its
#: bin, so it grows with the corpus. At 1 MiB a read task is about one row group (65,536 rows
#: in the tables this package writes), so what it holds does not grow with the corpus
#: (BENCHMARKS.md, prepare stage).
READ_TASK_BYTES = 1 << 20
_BIN_PACKING_VARIABLE = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"

#: Parquet files whose footers one of Ray Data's footer-reading actors is given. Ray 2.60
#: starts 32 such actors per read (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``), each a new worker
#: process, which on a small node costs more than the read: a table of a few files gets one.
FILES_PER_FOOTER_ACTOR = 256
_FOOTER_ACTORS_VARIABLE = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
_RAY_FOOTER_ACTORS = 32


def footer_actors(num_files: int) -> int:
    """Footer-reading actors for a table of ``num_files`` files: one per
    :data:`FILES_PER_FOOTER_ACTOR`, at least one, at most Ray's default.

    Example:
        >>> footer_actors(2), footer_actors(257), footer_actors(100_000)
        (1, 2, 32)
    """
    return max(1, min(_RAY_FOOTER_ACTORS, -(-num_files // FILES_PER_FOOTER_ACTOR)))


def read_dataset(path: str, **kwargs):
    """A Ray Data dataset over a Parquet table, read through the path's filesystem, in read
    tasks of about :data:`READ_TASK_BYTES`, with :func:`footer_actors` footer readers (a value
    of either already in the environment wins)."""
    import ray.data

    filesystem, inner = resolve(path)
    # Ray reads both variables when the read is planned, here in the driver, so setting them
    # for the call is enough and leaves the process environment as it was (the stages plan
    # their reads from one thread).
    chosen = {
        _BIN_PACKING_VARIABLE: str(READ_TASK_BYTES),
        _FOOTER_ACTORS_VARIABLE: str(footer_actors(len(parquet_files(path)))),
    }
    added = [name for name in chosen if name not in os.environ]
    for name in added:
        os.environ[name] = chosen[name]
    try:
        return ray.data.read_parquet(inner, filesystem=filesystem, **kwargs)
    finally:
        for name in added:
            del os.environ[name]


def write_dataset(dataset, path: str) -> None:
    """Write a Ray Data dataset as Parquet files under ``path``, through its filesystem."""
    filesystem, inner = resolve(path)
    dataset.write_parquet(inner, filesystem=filesystem)
