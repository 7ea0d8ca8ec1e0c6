"""Publishing files and directories atomically, so a half-written output never looks finished."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


def temporary_sibling(path: str) -> str:
    """A unique temporary name next to ``path``, on the same filesystem so a rename is atomic."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


def discard(path: str) -> None:
    """Remove a file or directory if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def publish(tmp_path: str, final_path: str) -> None:
    """Move ``tmp_path`` to ``final_path``, replacing what was there."""
    if os.path.isdir(tmp_path) and os.path.exists(final_path):
        # os.replace cannot replace a non-empty directory: move the old one aside first.
        old = temporary_sibling(final_path)
        os.replace(final_path, old)
        os.replace(tmp_path, final_path)
        discard(old)
    else:
        os.replace(tmp_path, final_path)


@contextlib.contextmanager
def atomic_path(final_path: str) -> Iterator[str]:
    """Yield a temporary path to write; publish it at ``final_path`` only on success.

    Example:
        >>> with atomic_path("/tmp/example.txt") as tmp:  # doctest: +SKIP
        ...     open(tmp, "w").write("done")
    """
    tmp_path = temporary_sibling(final_path)
    try:
        yield tmp_path
    except BaseException:
        discard(tmp_path)
        raise
    publish(tmp_path, final_path)


def parquet_files(path: str) -> list[str]:
    """The files of a Parquet table: ``path`` itself, or a directory's ``.parquet`` files in
    name order, without the hidden ones (``.`` or ``_``, which Ray Data and Arrow skip too).

    Example:
        >>> parquet_files("runs/seed/embeddings/corpus")  # doctest: +SKIP
        ['runs/seed/embeddings/corpus/part-000000-0000.parquet', ...]
    """
    if not os.path.isdir(path):
        return [path]
    return sorted(
        os.path.join(path, name)
        for name in os.listdir(path)
        if name.endswith(".parquet") and not name.startswith((".", "_"))
    )


def parquet_rows(path: str) -> int:
    """The row count of a Parquet table (:func:`parquet_files`), from the files' footers."""
    return sum(pq.read_metadata(file).num_rows for file in parquet_files(path))


def iter_parquet_batches(
    path: str, columns: list[str] | None = None, batch_size: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet table (:func:`parquet_files`), file by file in name order.

    Row group by row group: one ``iter_batches`` over a whole file holds memory that grows
    with the file (measured: 31 MiB of Arrow memory at 300k passages, 133 MiB at 3M).
    """
    for file in parquet_files(path):
        with pq.ParquetFile(file) as parquet:
            for group in range(parquet.num_row_groups):
                yield from parquet.iter_batches(
                    batch_size=batch_size, row_groups=[group], columns=columns
                )


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
