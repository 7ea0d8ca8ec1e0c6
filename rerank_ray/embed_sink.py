"""The embed stage's Ray Data datasink: embedding rows tagged by role, written as Parquet files
into one directory per role, each published whole or not at all.

Its own module because a datasink subclasses Ray Data's ``Datasink``: the embedding actor
(:class:`rerank_ray.embed.EmbedActor`) and the vector helpers of :mod:`rerank_ray.embed` stay
importable where Ray is not installed (a GPU image that runs them directly).
"""

from __future__ import annotations

import pyarrow as pa
from ray.data import Datasink

from rerank_ray.embed import ID_COLUMN, by_role
from rerank_ray.io import discard, join, makedirs, publish, temporary_sibling
from rerank_ray.parquet import parquet_rows, write_table


class RoleFiles(Datasink):
    """A Ray Data datasink that writes tagged embedding rows to one directory per role, and
    publishes each directory whole or not at all.

    Rows of ``role`` go to a temporary sibling of ``outputs[role]`` as ``(pid|qid,
    embedding)`` Parquet files, so corpus and queries share one actor pool and still land in
    the run's layout. File names derive from the write task's index: a retried task rewrites
    its own files. Lifecycle: :meth:`on_write_start` makes the temporary directories (once,
    on the driver: on an object store each call is a request), :meth:`write` fills them in
    the write tasks, :meth:`on_write_complete` counts the rows (:attr:`rows`) and publishes
    every directory (a role without rows gets an empty one), :meth:`on_write_failed` removes
    the temporaries.
    """

    def __init__(self, outputs: dict[str, str]):
        self.outputs = outputs
        self.temporary = {role: temporary_sibling(out) for role, out in outputs.items()}
        self.rows: dict[str, int] = {}

    def on_write_start(self, schema=None) -> None:
        for directory in self.temporary.values():
            makedirs(directory)

    def write(self, blocks, ctx) -> dict[str, int]:
        from ray.data.block import BlockAccessor

        counts: dict[str, int] = {}
        for index, block in enumerate(blocks):
            for role, rows in by_role(BlockAccessor.for_block(block).to_arrow()):
                out = pa.table({ID_COLUMN[role]: rows.column("id"), "embedding": rows["embedding"]})
                name = f"part-{ctx.task_idx:06d}-{index:04d}.parquet"
                write_table(out, join(self.temporary[role], name))
                counts[role] = counts.get(role, 0) + out.num_rows
        return counts

    def on_write_complete(self, write_result) -> None:
        self.on_write_start()  # no blocks at all: Ray never started the write
        self.rows = {role: parquet_rows(directory) for role, directory in self.temporary.items()}
        for role, out in self.outputs.items():
            publish(self.temporary[role], out)

    def on_write_failed(self, error: BaseException) -> None:
        for directory in self.temporary.values():
            discard(directory)
