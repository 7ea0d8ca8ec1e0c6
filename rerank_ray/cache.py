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
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_ray.embed import to_fixed_size_list
from rerank_ray.errors import DataError
from rerank_ray.io import atomic_path, parquet_files

#: Bumped when the stored layout changes, so old entries are not read as new ones.
CACHE_FORMAT = 1


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


def role_options(options, role: str) -> dict:
    """The embedding options that change the vectors of ``role`` (``corpus`` or ``queries``)."""
    if role == "queries":
        return {
            "pooling": options.pooling,
            "max_length": options.query_max_length,
            "instruction": options.query_instruction,
            "normalize": options.normalize,
            "storage": options.storage,
        }
    return {
        "pooling": options.pooling,
        "max_length": options.passage_max_length,
        "normalize": options.normalize,
        "storage": options.storage,
    }


def copy_tree(source: str, target: str) -> None:
    """Copy a directory of Parquet files, hard-linking where the filesystem allows it."""
    os.makedirs(target)
    for name in sorted(os.listdir(source)):
        if name.startswith("."):
            continue
        try:
            os.link(os.path.join(source, name), os.path.join(target, name))
        except OSError:  # another filesystem, or links not supported
            shutil.copy2(os.path.join(source, name), os.path.join(target, name))


class EmbeddingCache:
    """Embedding directories under ``root/embeddings/<key>/``, each published atomically."""

    def __init__(self, root: str):
        self.root = os.path.join(root, "embeddings")

    def path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def lookup(self, key: str) -> str | None:
        path = self.path(key)
        return path if os.path.isdir(path) else None

    def store(self, key: str, source_dir: str) -> str:
        """Put a copy of ``source_dir`` under ``key`` (a no-op if another run already did)."""
        path = self.path(key)
        if os.path.isdir(path):
            return path
        os.makedirs(self.root, exist_ok=True)
        with atomic_path(path) as tmp:
            copy_tree(source_dir, tmp)
        return path


def _embedding_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = parquet_files(path)
        if not files:
            raise DataError(f"{path}: no .parquet files")
        return files
    if not os.path.exists(path):
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


def import_embeddings(
    source: str, table_path: str, id_column: str, target_dir: str, storage: str = "float32"
) -> int:
    """Check user-supplied embeddings against a normalized table and write them to the run.

    Each id of the table must have exactly one finite vector, all of one dimension.

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
    expected = set(pq.read_table(table_path, columns=[id_column])[id_column].to_pylist())
    seen: set[str] = set()
    dimension = None
    with atomic_path(target_dir) as tmp:
        os.makedirs(tmp)
        for file_index, path in enumerate(_embedding_files(source)):
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            for column in (id_column, "embedding"):
                if column not in names:
                    raise DataError(f"{path}: missing column '{column}' (has {', '.join(names)})")
            row = 0
            writer = None
            for batch in parquet.iter_batches(columns=[id_column, "embedding"], batch_size=65_536):
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
                for offset, identifier in enumerate(ids):
                    if identifier not in expected:
                        raise DataError(
                            f"{path}, row {row + offset + 1}: {id_column} {identifier} is not in {table_path}"
                        )
                    if identifier in seen:
                        raise DataError(
                            f"{path}, row {row + offset + 1}: {id_column} {identifier} appears twice"
                        )
                    seen.add(identifier)
                out = pa.table(
                    {
                        id_column: pa.array(ids, pa.string()),
                        "embedding": to_fixed_size_list(vectors, storage),
                    }
                )
                if writer is None:
                    writer = pq.ParquetWriter(
                        os.path.join(tmp, f"part-{file_index:05d}.parquet"), out.schema
                    )
                writer.write_table(out)
                row += batch.num_rows
            if writer is not None:
                writer.close()
        missing = len(expected) - len(seen)
        if missing:
            example = next(iter(expected - seen))
            raise DataError(
                f"{source}: {missing} {id_column}s of {table_path} have no embedding (e.g. {example})"
            )
    return len(seen)
