"""The retrieve stage: the exact inner-product top-k of every query over the corpus embeddings,
in Ray tasks, written to ``retrieval.parquet`` as the results arrive.

The queries are cut into contiguous chunks (in qid order) and the corpus files into groups;
each Ray task runs the kernel of :mod:`rerank_ray.topk` for one chunk over one group
(:func:`search_files`), reading its files block by block. With one group a task's result is
final; with several, the driver merges a chunk's results by score, then id. The driver writes
each chunk's rows as soon as the chunk is complete, so it holds one chunk's results (and the
query vectors), never the corpus vectors nor the whole result.

How the work is cut (:func:`plan_tasks`): into as many tasks as there are slots (CPUs, or
GPUs where the device plan is ``cuda``); by queries where the results are large against the
corpus (every chunk reads the corpus once, nothing is merged: 6,980 queries x top 1,000), by
files where they are small (the corpus is read once, the driver merges small results).

Example::

    from rerank_ray.search import exact_search
    exact_search("run/embeddings/corpus", "run/embeddings/queries", "run/retrieval.parquet", k=100)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rerank_ray.errors import DataError
from rerank_ray.io import atomic_path, is_uri, open_input
from rerank_ray.parquet import parquet_files, parquet_writer, read_table
from rerank_ray.pool import StageStats, cluster_gpus, decide_device
from rerank_ray.ranking import RETRIEVAL_SCHEMA
from rerank_ray.topk import TILE_COLUMNS, BlockSearch, Ranked

#: Bytes of corpus vectors (as float32) a task reads and scores at once.
BLOCK_BYTES = 32 << 20

#: Corpus vectors (the first a task reads) its queries' k-th scores are guessed from.
SAMPLE_ROWS = 1 << 15

#: Fewest queries in a chunk: smaller chunks would read the corpus more often for little work.
MIN_CHUNK_QUERIES = 256

#: Cost of one more result row to merge (scored, selected, sent, merged), in values of corpus
#: vectors read.
MERGE_WEIGHT = 200

#: Rows of a row group of ``retrieval.parquet``.
ROW_GROUP_ROWS = 1 << 20

#: A task's result: query row (within its chunk), pid, float64 score; ordered.
PARTIAL_SCHEMA = pa.schema([("row", pa.int32()), ("pid", pa.string()), ("score", pa.float64())])


def plan_tasks(
    num_queries: int, k: int, corpus_rows: int, dim: int, num_files: int, slots: int
) -> tuple[int, int]:
    """``(query chunks, file groups)`` for ``slots`` tasks at once.

    Splitting the files costs a merge of ``queries x k`` rows per extra group in the driver;
    splitting the queries costs a read of the corpus per extra chunk. Where the rows to merge,
    weighted by :data:`MERGE_WEIGHT`, outnumber the corpus's values, the queries are split
    first (chunks of at least :data:`MIN_CHUNK_QUERIES`) and spare slots split the files;
    otherwise the files are split first.

    Example:
        >>> plan_tasks(6980, 1000, 1_000_000, 384, 4, 2), plan_tasks(1000, 100, 500_000, 384, 2, 2)
        ((2, 1), (1, 2))
    """
    by_queries = max(1, min(slots, num_queries // MIN_CHUNK_QUERIES))
    merged = num_queries * min(k, corpus_rows) * MERGE_WEIGHT
    if merged > corpus_rows * dim:
        return by_queries, max(1, min(num_files, slots // by_queries))
    groups = max(1, min(num_files, slots))
    return max(1, min(by_queries, slots // groups)), groups


def block_rows(dim: int) -> int:
    """Corpus rows per block: :data:`BLOCK_BYTES` of float32, whole tiles of the product."""
    rows = BLOCK_BYTES // (4 * max(1, dim))
    return max(TILE_COLUMNS, rows // TILE_COLUMNS * TILE_COLUMNS)


def _vectors(column: pa.Array) -> np.ndarray:
    """A vector column as a ``(rows, dim)`` array, float16 kept as stored, else float32 (as
    :func:`rerank_ray.embed.embedding_matrix` with ``keep_dtype``, whose module would make
    every task import Ray Data)."""
    values = column.flatten().to_numpy(zero_copy_only=False)
    values = values if values.dtype in (np.float16, np.float32) else values.astype(np.float32)
    return values.reshape(-1, column.type.list_size)


def _parquet(handle, path: str) -> pq.ParquetFile:
    """A Parquet reader; read-ahead of whole column chunks only on object stores, where it
    saves requests (locally it copies what a partial read never decodes)."""
    return pq.ParquetFile(handle, pre_buffer=is_uri(path))


def _file_rows(path: str) -> int:
    with open_input(path) as handle, _parquet(handle, path) as parquet:
        return parquet.metadata.num_rows


def _blocks(paths: list[str], rows: int, dim: int, seconds: dict) -> Iterator:
    """``(vectors, pids)`` blocks of ``rows`` from the files in turn; the CPU time spent
    reading goes to ``seconds["read"]``."""
    for path in paths:
        mark = time.process_time()
        with open_input(path) as handle, _parquet(handle, path) as parquet:
            for batch in parquet.iter_batches(batch_size=rows, columns=["pid", "embedding"]):
                vectors = _vectors(batch.column("embedding"))
                if vectors.shape[1] != dim:
                    raise DataError(
                        f"{path}: corpus embeddings have {vectors.shape[1]} dimensions,"
                        f" query embeddings {dim}"
                    )
                ids = batch.column("pid")
                seconds["read"] = seconds.get("read", 0.0) + time.process_time() - mark
                yield vectors, ids if ids.type == pa.string() else ids.cast(pa.string())
                mark = time.process_time()
        seconds["read"] = seconds.get("read", 0.0) + time.process_time() - mark


def search_files(
    paths: list[str],
    queries: np.ndarray,
    k: int,
    device: str | None = None,
    shortlist: bool = True,
    rows: int | None = None,
    guess: bool = True,
    seconds: dict | None = None,
) -> Ranked:
    """The top-k of ``queries`` over Parquet files of corpus embeddings, read block by block.

    With ``guess``, the lower bounds start from the first :data:`SAMPLE_ROWS` vectors
    (:meth:`BlockSearch.estimate`); the queries whose guess proves too high are searched again
    without one, so the result is exact either way. ``seconds`` (a dict) gets the CPU time spent
    reading, shortlisting, rescoring and selecting added to it.
    """
    seconds = {} if seconds is None else seconds
    search = BlockSearch(queries, k, device=device, shortlist=shortlist)
    blocks = _blocks(paths, rows or block_rows(queries.shape[1]), queries.shape[1], seconds)
    head = []
    total = sum(_file_rows(path) for path in paths) if guess else 0
    if total > k:
        # The sample: the first blocks read, scored as the others afterwards.
        for block in blocks:
            head.append(block)
            if sum(len(vectors) for vectors, _ in head) >= SAMPLE_ROWS:
                break
        search.estimate(np.concatenate([vectors for vectors, _ in head]), total)
    for vectors, ids in itertools.chain(head, blocks):
        search.add(vectors, ids)
    ranked = search.ranked()
    for phase, value in search.seconds.items():
        seconds[phase] = seconds.get(phase, 0.0) + value
    seconds["pairs"] = seconds.get("pairs", 0) + search.shortlisted
    if len(ranked.failed) == 0:
        return ranked
    seconds["guess_failed"] = seconds.get("guess_failed", 0) + len(ranked.failed)
    again = search_files(paths, queries[ranked.failed], k, device, shortlist, rows, False, seconds)
    table = pa.table(
        {
            "row": np.concatenate([ranked.rows, ranked.failed[again.rows]]),
            "pid": pa.concat_arrays([ranked.ids, again.ids]),
            "score": np.concatenate([ranked.scores, again.scores]),
        }
    )
    table = table.take(pc.sort_indices(table, [("row", "ascending")]))  # a stable sort
    return Ranked(
        table.column("row").to_numpy(),
        table.column("score").to_numpy(),
        table.column("pid").combine_chunks(),
        np.zeros(0, np.int64),
    )


def read_query_embeddings(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """All query ids and vectors of an embeddings directory, sorted by qid."""
    from rerank_ray.embed import embedding_matrix

    files = parquet_files(directory)
    if not files:
        raise DataError(f"{directory}: no query embeddings")
    table = pa.concat_tables(read_table(path) for path in files)
    qids = np.asarray(table.column("qid").to_pylist(), dtype=str)
    vectors = embedding_matrix(table.column("embedding"))
    order = np.argsort(qids, kind="stable")
    return qids[order], vectors[order]


def _merge(partials: list[pa.Table], k: int) -> pa.Table:
    """The top-k per query row of several tasks' results over disjoint files."""
    if len(partials) == 1:
        return partials[0]
    table = pa.concat_tables(partials)
    table = table.take(
        pc.sort_indices(
            table, [("row", "ascending"), ("score", "descending"), ("pid", "ascending")]
        )
    )
    return table.filter(pa.array(_positions(table.column("row").to_numpy()) < k))


def _positions(rows: np.ndarray) -> np.ndarray:
    """Each entry's position among the entries of its row (``rows`` ascending)."""
    index = np.arange(len(rows))
    starts = np.r_[True, rows[1:] != rows[:-1]] if len(rows) else np.zeros(0, bool)
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def _rows_of(qids: np.ndarray, partial: pa.Table) -> pa.Table:
    """A chunk's merged result as ``retrieval.parquet`` rows."""
    rows = partial.column("row").to_numpy()
    return pa.table(
        {
            "qid": pa.array(qids, pa.string()).take(pa.array(rows)),
            "pid": partial.column("pid"),
            "rank": pa.array(_positions(rows) + 1, pa.int32()),
            "score": pc.cast(partial.column("score"), pa.float32()),
        },
        schema=RETRIEVAL_SCHEMA,
    )


def exact_search(
    corpus_embeddings_dir: str,
    query_embeddings_dir: str,
    output_path: str,
    k: int,
    max_in_flight: int | None = None,
    device: str = "auto",
) -> StageStats:
    """Exact inner-product top-k of every query over the whole corpus, in Ray tasks.

    Args:
        corpus_embeddings_dir: Parquet files ``(pid, embedding)``.
        query_embeddings_dir: Parquet files ``(qid, embedding)``.
        output_path: ``retrieval.parquet`` to write: ``qid, pid, rank, score``, by qid and rank.
        k: Passages kept per query (fewer when the corpus is smaller).
        max_in_flight: Task slots to plan for (:func:`plan_tasks`); default: the cluster's CPUs,
            or its GPUs on ``cuda``.
        device: The device policy (:func:`rerank_ray.pool.decide_device`): on ``cuda`` each
            task asks for one GPU (tensor-core bfloat16 products), which also makes an
            autoscaler launch GPU nodes; on ``cpu`` it asks for one CPU.

    Returns:
        Rows written, wall time, resources and the tasks' summed phase times.
    """
    import ray

    started = time.perf_counter()
    qids, queries = read_query_embeddings(query_embeddings_dir)
    files = parquet_files(corpus_embeddings_dir)
    if not files:
        raise DataError(f"{corpus_embeddings_dir}: no corpus embeddings")
    plan = decide_device(device, cluster_gpus())
    num_gpus = 1 if plan.device == "cuda" else 0
    if max_in_flight is None:
        slots = plan.max_gpus if num_gpus else int(ray.cluster_resources().get("CPU", 2))
        max_in_flight = max(1, slots)
    corpus_rows = sum(_file_rows(path) for path in files)
    chunks, groups = plan_tasks(
        len(qids), k, corpus_rows, queries.shape[1], len(files), max_in_flight
    )
    search_task = ray.remote(max_retries=3, num_cpus=1, num_gpus=num_gpus)(_search_task)
    bounds = np.linspace(0, len(qids), chunks + 1).astype(int)
    file_groups = [files[g::groups] for g in range(groups)]
    pending = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        chunk = ray.put(queries[first:last])
        pending.append([search_task.remote(group, chunk, k) for group in file_groups])
    placements, seconds, rows, writing = [], {}, 0, 0.0
    with atomic_path(output_path) as tmp:
        writer = parquet_writer(tmp, RETRIEVAL_SCHEMA)
        try:
            for (first, last), refs in zip(zip(bounds[:-1], bounds[1:]), pending):
                partials = []
                for partial, placement, phases in ray.get(refs):
                    partials.append(partial)
                    placements.append(placement)
                    for phase, value in phases.items():
                        seconds[phase] = seconds.get(phase, 0) + value
                mark = time.perf_counter()
                table = _rows_of(qids[first:last], _merge(partials, k))
                writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
                rows += table.num_rows
                writing += time.perf_counter() - mark
                del partials, table
        finally:
            writer.close()
    return StageStats(
        rows=rows,
        wall_seconds=time.perf_counter() - started,
        resources={
            "policy": plan.policy,
            "device": plan.device,
            "reason": plan.reason,
            "tasks": chunks * groups,
            "query_chunks": chunks,
            "file_groups": groups,
            "num_gpus_per_task": num_gpus,
            "queries": len(qids),
            "nodes": len({p["node"] for p in placements}),
            "node_ids": sorted({p["node"] for p in placements}),
            "devices": sorted({p["device"] for p in placements}),
        },
        counts={
            "pairs_rescored": int(seconds.pop("pairs", 0)),
            "guess_failed": int(seconds.pop("guess_failed", 0)),
            "task_cpu_seconds": {phase: round(value, 3) for phase, value in seconds.items()},
            "driver_merge_write_seconds": round(writing, 3),
        },
    )


def _search_task(paths: list[str], queries: np.ndarray, k: int) -> tuple[pa.Table, dict, dict]:
    """:func:`search_files` in a Ray task: its result as a :data:`PARTIAL_SCHEMA` table, where
    it ran (node, and the device torch chose) and its phase times."""
    import ray

    from rerank_ray.models import pick_device

    device = pick_device()
    placement = {"node": ray.get_runtime_context().get_node_id(), "device": device}
    seconds: dict = {}
    ranked = search_files(paths, queries, k, device=device, seconds=seconds)
    table = pa.table(
        {"row": pa.array(ranked.rows, pa.int32()), "pid": ranked.ids, "score": ranked.scores},
        schema=PARTIAL_SCHEMA,
    )
    return table, placement, seconds
