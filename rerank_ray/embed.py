"""The embedding stage: a Ray Data actor pool around :class:`rerank_ray.embedder.Embedder`.

The corpus and query tables are read as one stream of blocks (each row tagged with its
role), each block goes through ``map_batches`` into a pool of actors that each load the model
once, and a datasink (:class:`rerank_ray.embed_sink.RoleFiles`) writes the vectors as Parquet
files per role ``(pid|qid, embedding: fixed_size_list<float32|float16>[dim])``. The driver
only plans the job: it never holds texts or vectors. The actor (:class:`EmbedActor`) imports
no Ray: it runs where Ray is not installed too, called directly as Ray Data calls it.

Example::

    from rerank_ray.embed import embed_tables
    stats = embed_tables(
        {"corpus": ("data/corpus.parquet", "embeddings/corpus"),
         "queries": ("data/queries.parquet", "embeddings/queries")},
        model="minilm", options=EmbedderOptions())
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.embedder import Embedder, EmbedderOptions
from rerank_ray.io import makedirs
from rerank_ray.parquet import parquet_files, parquet_rows, read_dataset
from rerank_ray.pool import (
    ActorResources,
    StageStats,
    announce_actor,
    collect_counters,
    map_with_actor_pool,
    plan_resources,
    report_counts,
)

log = logging.getLogger("rerank_ray")

ID_COLUMN = {"corpus": "pid", "queries": "qid"}

#: Rows handed to an actor per call. Large, so that each call length-sorts many texts and
#: the per-call overhead is amortised; the actor splits them into token-budgeted batches.
#: Each call is a Ray Data block, and the driver's memory grows with the number of blocks
#: (BENCHMARKS.md, embedding stage memory).
ROWS_PER_CALL = 4096


class EmbedActor:
    """The callable class Ray Data runs in each actor: one model, many batches.

    A batch is either one role's table (``pid|qid, text``, with ``role`` given) or a tagged
    table (``id, text, role`` per row, as :func:`embed_tables` streams corpus and queries
    through one pool); the output keeps the input's layout, with ``embedding`` for ``text``.

    Args:
        model: Alias, local directory or Hub name (resolved on the actor's node).
        options: Embedding options.
        role: ``corpus`` or ``queries`` for one-role batches (picks the id column, max length,
            instruction); ``None`` for tagged batches.
        threads: torch intra-op threads for CPU execution.
    """

    def __init__(
        self,
        model: str,
        options: EmbedderOptions,
        role: str | None = None,
        threads: int = 1,
        counters=None,
    ):
        import torch

        torch.set_num_threads(threads)
        self.role = role
        self.embedder = Embedder(model, options)
        self.counters = counters
        self._mark = None
        announce_actor(counters, self.embedder.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "role" not in batch.column_names:
            vectors = self._encode(batch.column("text").to_pylist(), self.role)
            id_column = ID_COLUMN[self.role]
            return pa.table({id_column: batch.column(id_column), "embedding": vectors})
        parts = []
        for role, rows in by_role(batch):
            if "input_ids" in rows.column_names:  # tokenized upstream, on CPUs
                started = time.perf_counter()
                max_length = max_length_of(self.embedder.options, role)
                tokens = rows.column("input_ids").to_pylist()
                encoded = self.embedder.encode_tokens(tokens, max_length)
                vectors = self._stored(encoded, role, started)
            else:
                vectors = self._encode(rows.column("text").to_pylist(), role)
            parts.append(rows.select(["id", "role"]).append_column("embedding", vectors))
        return pa.concat_tables(parts)

    def _encode(self, texts: list[str], role: str) -> pa.FixedSizeListArray:
        started = time.perf_counter()
        if role == "queries":
            return self._stored(self.embedder.encode_queries(texts), role, started)
        return self._stored(self.embedder.encode_corpus(texts), role, started)

    def _stored(self, vectors: np.ndarray, role: str, started: float) -> pa.FixedSizeListArray:
        """The vectors as stored; the role's counts since the last call, with the seconds
        since ``started`` as busy time, go to the pool's counters."""
        self.embedder.stats.busy_seconds += time.perf_counter() - started
        self._mark = report_counts(self.counters, self.embedder.stats, self._mark, role)
        return to_fixed_size_list(vectors, self.embedder.options.storage)


def by_role(table: pa.Table):
    """``(role, rows)`` for each role present in a tagged table (``role`` column)."""
    for role in table.column("role").unique().to_pylist():
        yield role, table.filter(pc.equal(table.column("role"), role))


def max_length_of(options: EmbedderOptions, role: str) -> int:
    """The token limit of ``role`` under resolved ``options``."""
    return options.query_max_length if role == "queries" else options.passage_max_length


def _tokenized(batch: pa.Table, model: str, options: EmbedderOptions) -> pa.Table:
    """``id, text, role`` as ``id, role, input_ids``: the CPU half of embedding.

    Run as Ray Data tasks ahead of GPU actors, so that tokenizing the next call overlaps the
    model running on the current one; the actors then only pad and run the model.
    """
    from transformers import AutoTokenizer

    from rerank_ray.embedder import role_texts
    from rerank_ray.models import resolve_model_path

    path = resolve_model_path(model)
    tokenizer = _TOKENIZERS.get(path)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    if options.query_max_length is None or options.passage_max_length is None:
        options = options.resolved(path)  # the pipeline passes resolved ones: no config read
    parts = []
    for role, rows in by_role(batch):
        texts = role_texts(rows.column("text").to_pylist(), role, options)
        ids = tokenizer(texts, truncation=True, max_length=max_length_of(options, role))
        tokens = pa.array(ids["input_ids"], pa.list_(pa.int32()))
        parts.append(rows.select(["id", "role"]).append_column("input_ids", tokens))
    return pa.concat_tables(parts)


#: Tokenizers loaded in this worker process (Ray reuses task workers), by model path.
_TOKENIZERS: dict = {}


def to_fixed_size_list(vectors: np.ndarray, dtype: str = "float32") -> pa.FixedSizeListArray:
    """A ``(n, dim)`` array as an Arrow ``fixed_size_list<float32|float16>[dim]`` column."""
    vectors = np.ascontiguousarray(vectors, dtype=np.dtype(dtype))
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def embedding_matrix(column: pa.ChunkedArray | pa.Array, keep_dtype: bool = False) -> np.ndarray:
    """The inverse of :func:`to_fixed_size_list`: an Arrow vector column as a 2-D array.

    float32 unless ``keep_dtype``, which keeps float16 storage as float16 (half the memory).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False)
    if keep_dtype and values.dtype in (np.float16, np.float32):
        return values.reshape(-1, width)
    return values.reshape(-1, width).astype(np.float32, copy=False)


def embed_table(
    table_path: str,
    output_dir: str,
    role: str,
    model: str,
    options: EmbedderOptions,
    resources: ActorResources | None = None,
    rows_per_call: int = ROWS_PER_CALL,
) -> StageStats:
    """Embed one normalized ``corpus`` or ``queries`` table (see :func:`embed_tables`)."""
    stats = embed_tables({role: (table_path, output_dir)}, model, options, resources, rows_per_call)
    return stats[role]


def embed_tables(
    tables: dict[str, tuple[str, str]],
    model: str,
    options: EmbedderOptions,
    resources: ActorResources | None = None,
    rows_per_call: int = ROWS_PER_CALL,
    tokenize_upstream: bool | None = None,
) -> dict[str, StageStats]:
    """Embed normalized tables through one actor pool, into Parquet files per role.

    Corpus and queries stream through the same actors, so the model is loaded once per actor
    for both (an actor start costs seconds on a CPU and more for a large model on a GPU).

    Args:
        tables: ``{role: (table_path, output_dir)}``; ``role`` is ``corpus`` or ``queries``,
            the table has the role's id column and ``text``, the directory receives the
            embedding files and is published atomically (all of them, or none).
        model: Alias, local directory or Hub name.
        options: Embedding options.
        resources: The actor pool; sized from the cluster when ``None``.
        rows_per_call: Rows per actor call.
        tokenize_upstream: Tokenize in Ray Data CPU tasks ahead of the actors, so the next
            call's tokenizing overlaps the model; ``None``: when the actors have GPUs (on
            CPUs both halves would share the same cores).

    Returns:
        Per role: rows written, the pool's wall time (shared) and resources, counts.
    """
    from rerank_ray.embed_sink import RoleFiles

    resources = resources or plan_resources()
    started = time.perf_counter()
    total = sum(parquet_rows(table_path) for table_path, _ in tables.values())
    rows_per_call = balanced_call_size(total, resources.actors, rows_per_call)
    streams = []
    for role, (table_path, _) in sorted(tables.items(), reverse=True):  # queries first: short
        stream = read_dataset(table_path).select_columns([ID_COLUMN[role], "text"])
        streams.append(
            stream.map_batches(_tagged, fn_kwargs={"role": role}, batch_format="pyarrow")
        )
    # A Parquet file reads as one block; streaming repartition cuts the stream into call-sized
    # blocks so that every actor of the pool gets work (without a shuffle barrier).
    dataset = streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]
    dataset = dataset.repartition(target_num_rows_per_block=rows_per_call)
    if tokenize_upstream is None:
        tokenize_upstream = resources.num_gpus_per_actor > 0
    if tokenize_upstream:
        dataset = dataset.map_batches(
            _tokenized,
            fn_kwargs={"model": model, "options": options},
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=1,
        )
        # A task handed several blocks returns them as one: cut again to call size, so that
        # calls spread over the actors.
        dataset = dataset.repartition(target_num_rows_per_block=rows_per_call)
    vectors, counters = map_with_actor_pool(
        dataset, EmbedActor, {"model": model, "options": options}, resources, rows_per_call
    )
    sink = RoleFiles({role: out for role, (_, out) in tables.items()})
    try:
        vectors.write_datasink(sink)
    except BaseException as error:
        if not isinstance(error, Exception):  # Ray reports only Exceptions to the sink
            sink.on_write_failed(error)
        raise
    rows = sink.rows
    counts, used = collect_counters(counters, resources)
    wall = time.perf_counter() - started
    return {
        role: StageStats(
            rows=rows[role],
            wall_seconds=wall,
            resources={
                **used,
                "roles_in_pool": sorted(tables),
                "tokenized_upstream": tokenize_upstream,
                "rows_per_call": rows_per_call,
            },
            counts={k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith(role + ".")},
        )
        for role in tables
    }


@dataclass(frozen=True)
class Role:
    """One role of the embed stage: its normalized table, where its vectors go, and the
    vectors the user supplied for it (``None``: computed or reused)."""

    name: str
    table: str
    rows: int
    content_hash: str | None
    out: str
    supplied: str | None = None


def embed_or_reuse(
    roles: list[Role],
    model: str,
    fingerprint: str,
    options: EmbedderOptions,
    cache=None,
    resources: ActorResources | None = None,
    rows_per_call: int = ROWS_PER_CALL,
) -> dict:
    """The embed stage: each role's vectors from, in order of preference, what the user
    supplied (checked, :func:`rerank_ray.supplied.import_embeddings`), an entry of ``cache``
    (an :class:`~rerank_ray.cache.EmbeddingCache`) with the same key (model fingerprint,
    vector-changing options, content hash, compute precision), or one actor pool for the
    roles left (:func:`embed_tables`), whose vectors are then stored in the cache. When no
    role needs the model, it is never loaded.

    Returns:
        The stage's statistics: rows, wall time, whether everything was reused, the pool's
        resources, and per role its rows, source and cache key.
    """
    from rerank_ray.cache import embedding_key
    from rerank_ray.io import atomic_path, copy_tree, split
    from rerank_ray.keys import compute_precision, vector_options
    from rerank_ray.supplied import import_embeddings

    resources = resources or plan_resources()
    dtype = compute_precision(resources.device)
    started = time.perf_counter()
    parts, keys, to_compute = {}, {}, {}
    for role in roles:
        makedirs(split(role.out)[0])
        keys[role.name] = embedding_key(
            fingerprint, vector_options(options, role.name), role.name, role.content_hash, dtype
        )
        role_started = time.perf_counter()
        usable = cache is not None and role.content_hash and not role.supplied
        cached = cache.lookup(keys[role.name], role.rows) if usable else None
        if role.supplied:
            log.info("stage embed: %s from %s", role.name, role.supplied)
            rows = import_embeddings(
                role.supplied, role.table, ID_COLUMN[role.name], role.out, options.storage
            )
            parts[role.name] = {"rows": rows, "reused": True, "source": role.supplied}
        elif cached:
            log.info("stage embed: %s reused from the cache %s", role.name, cached)
            with atomic_path(role.out) as tmp:
                copy_tree(cached, tmp)
            parts[role.name] = {"rows": role.rows, "reused": True, "source": cached}
        else:
            to_compute[role.name] = role
            continue
        parts[role.name]["wall_seconds"] = round(time.perf_counter() - role_started, 3)
    if to_compute:
        log.info("stage embed: %s, one actor pool", " and ".join(sorted(to_compute)))
        computed = embed_tables(
            {name: (role.table, role.out) for name, role in to_compute.items()},
            model=model,
            options=options,
            resources=resources,
            rows_per_call=rows_per_call,
        )
        for name, stats in computed.items():
            parts[name] = {**stats.to_dict(), "reused": False}
            if cache is not None and to_compute[name].content_hash:
                parts[name]["cached_at"] = cache.store(keys[name], to_compute[name].out)
    for name, role in ((role.name, role) for role in roles):
        # Supplied vectors were not computed under the embedder's key: none is recorded.
        parts[name]["cache_key"] = None if role.supplied else keys[name]
    rows = sum(p["rows"] for p in parts.values())
    wall = time.perf_counter() - started
    return {
        "rows": rows,
        "wall_seconds": round(wall, 3),
        "rows_per_second": round(rows / wall, 3) if wall else 0.0,
        "reused": all(p["reused"] for p in parts.values()),
        "resources": resources.to_dict(),
        **parts,
    }


def balanced_call_size(rows: int, actors: int, rows_per_call: int) -> int:
    """``rows_per_call``, made smaller when that would leave an actor of the pool idle.

    With several actors each gets at least two calls (an actor that is ready first may queue
    several), but calls stay large enough (64 rows) for the length sort to pay.

    Example:
        >>> balanced_call_size(2020, actors=2, rows_per_call=1024)
        505
        >>> balanced_call_size(2020, actors=1, rows_per_call=1024)
        1024
        >>> balanced_call_size(80, actors=2, rows_per_call=32)  # never above what was asked
        32
    """
    if actors <= 1:
        return rows_per_call
    return min(rows_per_call, max(64, -(-rows // (2 * actors))))


def _tagged(batch: pa.Table, role: str) -> pa.Table:
    """``pid|qid, text`` as ``id, text, role``: one schema for both roles' rows."""
    return pa.table(
        {"id": batch.column(0), "text": batch.column("text"), "role": pa.array([role] * len(batch))}
    )


def embedding_files(directory: str) -> list[str]:
    """The Parquet files of an embeddings directory, in name order."""
    return parquet_files(directory)
