"""The embedding stage: a Ray Data actor pool around :class:`rerank_ray.models.Embedder`.

The corpus (or query) table is read as a stream of blocks, each block goes through
``map_batches`` into a pool of actors that each load the model once, and Ray Data writes the
vectors as Parquet files ``(pid|qid, embedding: fixed_size_list<float32>[dim])``. The driver
only plans the job: it never holds texts or vectors.

Example:
    >>> from rerank_ray.embed import embed_table
    >>> stats = embed_table("data/corpus.parquet", "embeddings/corpus", role="corpus",
    ...                     model="minilm", options=EmbedderOptions())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_ray.io import atomic_path
from rerank_ray.models import Embedder, EmbedderOptions

ID_COLUMN = {"corpus": "pid", "queries": "qid"}

#: Rows handed to an actor per call. Large, so that each call length-sorts many texts and
#: the per-call overhead is amortised; the actor splits them into token-budgeted batches.
ROWS_PER_CALL = 1024


@dataclass(frozen=True)
class ActorResources:
    """The actor pool of a model stage.

    Args:
        actors: Number of actors (model replicas).
        num_gpus_per_actor: GPUs each actor reserves (0 on CPU-only clusters).
        num_cpus_per_actor: CPUs each actor reserves from Ray.
        threads_per_actor: torch intra-op threads in each CPU actor.
    """

    actors: int
    num_gpus_per_actor: float
    num_cpus_per_actor: float
    threads_per_actor: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan_resources(
    actors: int | None = None, gpus_per_actor: float | None = None
) -> ActorResources:
    """Size an actor pool from the connected Ray cluster's resources.

    One actor per GPU when the cluster has GPUs; otherwise one CPU actor. The node's cores
    are shared among its actors as torch threads, while Ray's CPU reservation leaves one
    core's worth free for the reading and writing tasks that feed them.
    """
    import ray

    cluster = ray.cluster_resources()
    total_gpus = int(cluster.get("GPU", 0))
    total_cpus = max(1, int(cluster.get("CPU", 1)))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if total_gpus else 0.0
    if actors is None:
        actors = max(1, int(total_gpus // gpus_per_actor)) if gpus_per_actor else 1
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus_per_node = max(int(n["Resources"].get("CPU", 1)) for n in nodes) if nodes else total_cpus
    actors_per_node = max(1, -(-actors // max(1, len(nodes))))
    threads = max(1, cpus_per_node // actors_per_node)
    # Leave one CPU per node unreserved: Ray Data's read, repartition and write tasks need
    # it, and a pool that reserves every CPU waits forever for its input.
    cpus_per_actor = min(1.0, max(0.25, (cpus_per_node - 1) / actors_per_node))
    return ActorResources(
        actors=actors,
        num_gpus_per_actor=gpus_per_actor,
        num_cpus_per_actor=cpus_per_actor,
        threads_per_actor=threads,
    )


class _Counters:
    """Totals that a pool's actors report (rows, truncated texts, tokens); one per stage run.

    Counts of a batch that Ray retried after a failure are added again: the totals are exact
    for undisturbed runs and upper bounds otherwise.
    """

    def __init__(self):
        self.totals: dict[str, int] = {}
        self.actors: list[dict] = []

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.totals[key] = self.totals.get(key, 0) + value

    def started(self, actor: dict) -> None:
        self.actors.append(actor)

    def get(self) -> dict[str, int]:
        return self.totals

    def started_actors(self) -> list[dict]:
        return self.actors


def announce_actor(counters, device: str) -> None:
    """Tell ``counters`` where this actor runs: node, the GPUs Ray gave it, and torch's device."""
    import ray

    if counters is None:
        return
    context = ray.get_runtime_context()
    ray.get(
        counters.started.remote(
            {
                "node_id": context.get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "device": device,
                "pid": os.getpid(),
            }
        )
    )


def used_resources(counters, planned: ActorResources) -> dict:
    """The planned pool plus what its actors reported: actors started, nodes and devices."""
    import ray

    started = ray.get(counters.started_actors.remote())
    return {
        **planned.to_dict(),
        "actors_started": len(started),
        "nodes": len({a["node_id"] for a in started}),
        "devices": sorted({a["device"] for a in started}),
        "gpu_ids": sorted({g for a in started for g in a["gpu_ids"]}),
    }


def start_counters():
    """A Ray actor collecting :class:`_Counters` (no CPU reserved: it only adds numbers)."""
    import ray

    return ray.remote(num_cpus=0)(_Counters).remote()


def report_counts(counters, stats, before: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Send the growth of a model's :class:`BatchStats` since ``before``; return the new mark."""
    now = (stats.rows, stats.truncated, stats.tokens, stats.padded_tokens)
    if counters is not None:
        names = ("rows", "truncated", "tokens", "padded_tokens")
        import ray

        # Waited for (one small round trip per call), so the totals are complete when the
        # dataset finishes.
        ray.get(counters.add.remote({n: a - b for n, a, b in zip(names, now, before)}))
    return now


def map_with_actor_pool(
    dataset, actor_class, constructor_kwargs: dict, resources, rows_per_call: int
):
    """``dataset.map_batches`` through a pool of ``actor_class`` sized by ``resources``.

    Each actor also gets ``threads`` and a ``counters`` handle (returned, for
    :func:`collect_counters`).
    """
    from ray.data import ActorPoolStrategy

    counters = start_counters()
    mapped = dataset.map_batches(
        actor_class,
        fn_constructor_kwargs={
            **constructor_kwargs,
            "threads": resources.threads_per_actor,
            "counters": counters,
        },
        batch_format="pyarrow",
        batch_size=rows_per_call,
        compute=ActorPoolStrategy(size=resources.actors),
        num_gpus=resources.num_gpus_per_actor,
        num_cpus=resources.num_cpus_per_actor,
    )
    return mapped, counters


def collect_counters(counters, resources: ActorResources) -> tuple[dict, dict]:
    """The pool's totals and the resources it used; then the counters actor is released."""
    import ray

    counts = ray.get(counters.get.remote())
    used = used_resources(counters, resources)
    ray.kill(counters)
    return counts, used


class EmbedActor:
    """The callable class Ray Data runs in each actor: one model, many batches.

    Args:
        model: Alias, local directory or Hub name (resolved on the actor's node).
        options: Embedding options.
        role: ``corpus`` or ``queries`` (picks the id column, max length, instruction).
        threads: torch intra-op threads for CPU execution.
    """

    def __init__(
        self, model: str, options: EmbedderOptions, role: str, threads: int = 1, counters=None
    ):
        import torch

        torch.set_num_threads(threads)
        self.role = role
        self.id_column = ID_COLUMN[role]
        self.embedder = Embedder(model, options)
        self.counters = counters
        self._mark = (0, 0, 0, 0)
        announce_actor(counters, self.embedder.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        if self.role == "queries":
            vectors = self.embedder.encode_queries(texts)
        else:
            vectors = self.embedder.encode_corpus(texts)
        self._mark = report_counts(self.counters, self.embedder.stats, self._mark)
        return pa.table(
            {self.id_column: batch.column(self.id_column), "embedding": to_fixed_size_list(vectors)}
        )


def to_fixed_size_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """A ``(n, dim)`` float32 array as an Arrow ``fixed_size_list<float32>[dim]`` column."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The inverse of :func:`to_fixed_size_list`: an Arrow vector column as a 2-D array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(-1, width).astype(np.float32, copy=False)


@dataclass(frozen=True)
class StageStats:
    """What a stage reports to the manifest."""

    rows: int
    wall_seconds: float
    resources: dict
    counts: dict | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "wall_seconds": round(self.wall_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 3),
            "resources": self.resources,
            **({"counts": self.counts} if self.counts else {}),
        }


def embed_table(
    table_path: str,
    output_dir: str,
    role: str,
    model: str,
    options: EmbedderOptions,
    resources: ActorResources | None = None,
    rows_per_call: int = ROWS_PER_CALL,
) -> StageStats:
    """Embed a normalized ``corpus`` or ``queries`` table into Parquet files under ``output_dir``.

    Args:
        table_path: Parquet table with the id column and ``text``.
        output_dir: Directory that receives the embedding files; published atomically.
        role: ``corpus`` or ``queries``.
        model: Alias, local directory or Hub name.
        options: Embedding options.
        resources: The actor pool; sized from the cluster when ``None``.
        rows_per_call: Rows per actor call.

    Returns:
        Rows written, wall time and the resources used.
    """
    import ray
    import ray.data

    resources = resources or plan_resources()
    id_column = ID_COLUMN[role]
    counters = start_counters()
    started = time.perf_counter()
    # A Parquet file reads as one block; streaming repartition cuts it into call-sized
    # blocks so that every actor of the pool gets work (without a shuffle barrier).
    dataset = (
        ray.data.read_parquet(table_path)
        .select_columns([id_column, "text"])
        .repartition(target_num_rows_per_block=rows_per_call)
    )
    vectors, counters = map_with_actor_pool(
        dataset,
        EmbedActor,
        {"model": model, "options": options, "role": role},
        resources,
        rows_per_call,
    )
    with atomic_path(output_dir) as tmp_dir:
        vectors.write_parquet(tmp_dir)
        rows = _count_rows(tmp_dir)
    counts, used = collect_counters(counters, resources)
    return StageStats(
        rows=rows,
        wall_seconds=time.perf_counter() - started,
        resources=used,
        counts=counts,
    )


def _count_rows(directory: str) -> int:
    return sum(
        pq.ParquetFile(path).metadata.num_rows for path in sorted(embedding_files(directory))
    )


def embedding_files(directory: str) -> list[str]:
    """The Parquet files of an embeddings directory, in name order."""
    return sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.endswith(".parquet") and not name.startswith(".")
    )
