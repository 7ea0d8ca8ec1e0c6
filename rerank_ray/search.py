"""Exact inner-product top-k: a running top-k per Ray task over blocks of corpus vectors.

Each task reads one Parquet file of corpus embeddings in blocks and keeps, for every query, the
exact top-k seen so far (:class:`BlockSearch`); the driver merges the tasks' results as they
finish (:func:`rerank_ray.ranking.merge_topk`). The driver holds the query vectors and one
``queries x k`` result, never the corpus vectors, so its memory does not grow with the corpus.

Per block, a bfloat16 matrix product shortlists the passages that can still enter a query's
top-k, and only those are scored exactly:

* ``approx = bf16(q) . bf16(d)`` (float32 accumulation, bfloat16 output) differs from the
  exact ``q . d`` by at most ``error + relative |approx|``: ``error`` bounds the inputs'
  rounding by Cauchy-Schwarz (``|bf16(q)| |d - bf16(d)| + |q - bf16(q)| |bf16(d)| + ...``,
  with the queries' residuals measured and a passage's at most ``u |d|``, ``u = 2^-8``) plus
  the float32 accumulation (``1.01 n 2^-24 |q| |d|`` for ``n`` dimensions); ``relative`` is
  the rounding of the float32 sum to bfloat16 (``u / (1 - u)``). Norms are taken per block
  (its largest) and padded by 0.1 %.
* A passage can enter the top-k only if its exact score reaches the current k-th exact score
  ``s_k``, hence only if ``approx + error + relative |approx| >= s_k``, which is a bar on
  ``approx`` alone (rounded down to bfloat16 before comparing). Before a query has k exact
  scores, the lowest exact value the block's own approximate k-th score can have is used
  instead (a passage in the overall top-k is in its block's top-k).
* Shortlisted pairs are scored in float64 from the stored vectors: the score is the inner
  product rounded once, whatever the block split, device or summation order.

So the result is exactly the top-k by float64 score, ties broken by pid (ascending), while the
full product runs at bfloat16 speed (2.3x float32 here: AVX512-BF16; tensor cores on a GPU,
with bfloat16 reductions switched off). The tests check the bound itself and the results
against float64 brute force. On a machine without fast bfloat16 products,
``shortlist=False`` shortlists with a float32 product instead (bound: the accumulation only);
the result is the same.

Example:
    >>> import numpy as np
    >>> from rerank_ray.search import BlockSearch
    >>> search = BlockSearch(np.array([[1.0, 0.0]], dtype=np.float32), k=2)
    >>> search.add(np.array([[0.5, 0], [0.9, 0], [0.5, 1]], dtype=np.float32), np.array(["c", "a", "b"]))
    >>> search.result().ids.tolist()
    [['a', 'b']]
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rerank_ray.embed import embedding_files, embedding_matrix
from rerank_ray.errors import DataError
from rerank_ray.io import atomic_path, open_input
from rerank_ray.parquet import read_table, write_table
from rerank_ray.pool import StageStats, cluster_gpus, decide_device
from rerank_ray.ranking import TopK, merge_topk, topk_table

#: Most scores one block's matrix product may hold: 32M bfloat16 (64 MiB).
MAX_BLOCK_SCORES = 1 << 25

#: Rounding a float32 sum to bfloat16 (round to nearest): ``|x - a| <= u |a| / (1 - u)``.
BFLOAT16_OUTPUT_ROUNDING = 2.0**-8 / (1 - 2.0**-8)

#: Absolute slack for vectors so small that bfloat16 flushes them to zero.
_TINY = 1e-30


@contextmanager
def _float32_accumulation(device):
    """Keep cuBLAS from summing bfloat16 products in bfloat16, which the bound does not allow."""
    import torch

    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_bf16_reduced_precision_reduction
    matmul.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before


def _round_down(values, dtype):
    """The largest values of ``dtype`` not above ``values`` (so a comparison in ``dtype`` keeps
    everything the exact one would)."""
    import torch

    rounded = values.to(dtype)
    below = torch.nextafter(rounded, torch.tensor(-torch.inf, dtype=dtype, device=values.device))
    return torch.where(rounded.double() > values, below, rounded)


class BlockSearch:
    """The exact top-k of fixed queries over corpus vectors added block by block.

    Args:
        queries: ``(num_queries, dim)`` query vectors (float32 or float16).
        k: Passages kept per query (fewer while fewer have been added).
        device: ``cuda`` or ``cpu``; default: what torch sees.
        shortlist: Shortlist with a bfloat16 product (exact either way; see the module).

    Example:
        >>> import numpy as np
        >>> search = BlockSearch(np.eye(2, dtype=np.float32), k=1)
        >>> search.add(np.array([[2.0, 1.0]], dtype=np.float32), np.array(["x"]))
        >>> search.add(np.array([[1.0, 3.0]], dtype=np.float32), np.array(["y"]))
        >>> search.result().ids.tolist(), search.result().scores.tolist()
        ([['x'], ['y']], [[2.0], [3.0]])
    """

    def __init__(
        self, queries: np.ndarray, k: int, device: str | None = None, shortlist: bool = True
    ):
        import torch

        from rerank_ray.models import pick_device

        self.k = k
        self.shortlist = shortlist
        self.device = pick_device(device)
        # A copy (torch.tensor): query arrays from the object store are read-only, and
        # torch.from_numpy warns on those.
        exact = torch.tensor(np.asarray(queries), dtype=torch.float64, device=self.device)
        self._queries = exact
        self._queries_float = exact.float()
        self._queries_short = exact.float().to(torch.bfloat16)
        self._query_norms = exact.norm(dim=1) * 1.001
        self._short_norms = self._queries_short.double().norm(dim=1) * 1.001
        self._residual_norms = (exact - self._queries_short.double()).norm(dim=1) * 1.001
        num_queries = len(queries)
        # The best k exact scores so far per query (descending), and their k-th: the bar to pass.
        self._best = torch.full(
            (num_queries, 0), -torch.inf, dtype=torch.float64, device=self.device
        )
        self._bar = torch.full((num_queries,), -torch.inf, dtype=torch.float64, device=self.device)
        self._rows: list[
            np.ndarray
        ] = []  # kept (query row, id, exact score), compacted as it grows
        self._ids: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._kept = 0
        self._buffers: dict = {}
        self.seen = 0
        self.shortlisted = 0

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Score a block of corpus vectors ``(n, dim)`` with ids ``(n,)`` against all queries."""
        import torch

        if len(ids) == 0:
            return
        with warnings.catch_warnings():
            # Blocks read from Parquet are read-only views; the kernel only reads them, so it
            # keeps the view instead of copying every block.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            block = torch.from_numpy(np.ascontiguousarray(vectors)).to(self.device)
        rows, columns = self._candidates(block)
        scores = self._exact_scores(rows, columns, block)
        passing = scores >= self._bar[rows]  # ties with the k-th stay: they go by pid at the end
        rows, columns, scores = rows[passing], columns[passing], scores[passing]
        self._raise_bar(rows, scores)
        self._rows.append(rows.cpu().numpy())
        self._ids.append(np.asarray(ids)[columns.cpu().numpy()])
        self._scores.append(scores.cpu().numpy())
        self._kept += len(rows)
        self.seen += len(ids)
        self.shortlisted += len(passing)
        if self._kept > 4 * self._queries.shape[0] * self.k:
            self._compact()

    def _candidates(self, block):
        """``(rows, columns)`` of the (query, passage) pairs that may enter a top-k."""
        import torch

        approx, error, relative = self._approximate(block)
        lower = self._bar
        if torch.isinf(lower).any() and block.shape[0] >= self.k:
            # A passage of the overall top-k is in its block's top-k, whose k-th exact score is
            # at least the lowest the block's approximate k-th can be.
            kth = torch.topk(approx, self.k, dim=1).values[:, -1].double()
            lower = torch.maximum(lower, kth - error - relative * kth.abs())
        # exact <= approx + error + relative * |approx|, so exact >= lower needs approx >= bar:
        gap = lower - error
        bar = torch.where(gap >= 0, gap / (1 + relative), gap / (1 - relative))
        bar = _round_down(bar, approx.dtype)
        mask = self._buffer("mask", approx.shape, torch.bool)
        if approx.dtype == torch.bfloat16 and bool((bar > 0).all()):
            # Positive bfloat16 values order as their bits do, and a negative value's bits read
            # as a negative int16: one integer comparison, twice as fast as the float one.
            torch.ge(approx.view(torch.int16), bar.view(torch.int16)[:, None], out=mask)
        else:
            torch.ge(approx, bar[:, None], out=mask)
        if mask.device.type != "cpu":
            return torch.nonzero(mask, as_tuple=True)
        flat = torch.from_numpy(np.flatnonzero(mask.numpy()))  # 2x torch.nonzero on CPU
        return flat // mask.shape[1], flat % mask.shape[1]

    def _approximate(self, block):
        """Approximate scores of all queries against ``block`` and their error bound.

        Returns ``(approx, error, relative)`` with ``|exact - approx| <= error + relative *
        |approx|`` for every pair: ``error`` per query (float64), ``relative`` a number.
        """
        import torch

        size, dim = block.shape
        accumulation = 1.01 * dim * 2.0**-24  # float32 sums of dim products
        if block.dtype != torch.float32:  # float16 storage: widened into a reused buffer
            block = self._buffer("block float32", (size, dim), torch.float32).copy_(block)
        norm = block.norm(dim=1).max().double() * 1.001
        if not self.shortlist:
            approx = self._buffer("scores", (len(self._queries), size), torch.float32)
            torch.mm(self._queries_float, block.T, out=approx)
            return approx, accumulation * self._query_norms * norm + _TINY, 0.0
        short = self._buffer("short", (size, dim), torch.bfloat16)
        short.copy_(block)
        approx = self._buffer("scores", (len(self._queries), size), torch.bfloat16)
        with _float32_accumulation(block.device):
            torch.mm(self._queries_short, short.T, out=approx)
        # The inputs' rounding (Cauchy-Schwarz on each term): a passage's residual is at most
        # u |d| (u = 2^-8, round to nearest), the queries' is measured once.
        short_norm, residual = norm * (1 + 2.0**-8), norm * 2.0**-8
        error = (
            self._short_norms * residual
            + self._residual_norms * short_norm
            + self._residual_norms * residual
            + accumulation * self._short_norms * short_norm
            + _TINY
        )
        return approx, error, BFLOAT16_OUTPUT_ROUNDING

    def _buffer(self, name: str, shape: tuple[int, int], dtype):
        """A reused tensor of ``shape``: fresh 64 MiB allocations cost page faults per block."""
        import torch

        needed = shape[0] * shape[1]
        held = self._buffers.get(name)
        if held is None or held.numel() < needed or held.dtype != dtype:
            held = torch.empty(needed, dtype=dtype, device=self.device)
            self._buffers[name] = held
        return held[:needed].view(shape)

    def _exact_scores(self, rows, columns, block):
        """float64 inner products of the given pairs, in chunks that stay in cache."""
        import torch

        dim = block.shape[1]
        chunk = max(64, (3 << 18) // dim)  # ~0.8M values per gathered side
        scores = torch.empty(len(rows), dtype=torch.float64, device=self.device)
        queries = self._buffer("gathered queries", (chunk, dim), torch.float64)
        passages = self._buffer("gathered passages", (chunk, dim), block.dtype)
        wide = self._buffer("gathered passages float64", (chunk, dim), torch.float64)
        for start in range(0, len(rows), chunk):
            end = min(start + chunk, len(rows))
            count = end - start
            torch.index_select(self._queries, 0, rows[start:end], out=queries[:count])
            torch.index_select(block, 0, columns[start:end], out=passages[:count])
            wide[:count].copy_(passages[:count])
            torch.sum(queries[:count].mul_(wide[:count]), dim=1, out=scores[start:end])
        return scores

    def _raise_bar(self, rows, scores) -> None:
        """Fold new exact scores into the best k per query and update the k-th (the bar)."""
        import torch

        if len(rows) == 0:
            return
        counts = torch.bincount(rows, minlength=self._best.shape[0])
        width = int(counts.max())
        # Each new score's slot within its row: its position among the row's new scores.
        order = torch.argsort(rows, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slots = torch.arange(len(rows), device=rows.device) - starts[rows[order]]
        dense = torch.full(
            (self._best.shape[0], width), -torch.inf, dtype=torch.float64, device=rows.device
        )
        dense[rows[order], slots] = scores[order]
        merged = torch.cat([self._best, dense], dim=1)
        self._best = torch.topk(merged, min(self.k, merged.shape[1]), dim=1).values
        if self._best.shape[1] == self.k:
            self._bar = self._best[:, -1]

    def _compact(self) -> None:
        """Drop kept pairs that fell below their query's bar."""
        rows, ids, scores = (
            np.concatenate(parts) for parts in (self._rows, self._ids, self._scores)
        )
        keep = scores >= self._bar.cpu().numpy()[rows]
        self._rows, self._ids, self._scores = [rows[keep]], [ids[keep]], [scores[keep]]
        self._kept = int(keep.sum())

    def result(self) -> TopK:
        """The top-k per query, best first, ties by id; scores are float64 inner products."""
        num_queries = self._queries.shape[0]
        width = min(self.k, self.seen)
        if not self._rows or width == 0:
            return TopK(np.zeros((num_queries, 0)), np.zeros((num_queries, 0), dtype=str))
        self._compact()
        rows, ids, scores = self._rows[0], self._ids[0], self._scores[0]
        order = np.lexsort((ids, -scores, rows))
        rows, ids, scores = rows[order], ids[order], scores[order]
        first = np.searchsorted(rows, np.arange(num_queries))
        take = first[:, None] + np.arange(width)
        return TopK(scores[take], ids[take])


def search_file(
    path: str,
    queries: np.ndarray,
    k: int,
    block_rows: int | None = None,
    device: str | None = None,
    shortlist: bool = True,
) -> TopK:
    """Top-k of ``queries`` over one Parquet file of corpus embeddings, read block by block."""
    if block_rows is None:
        block_rows = max(1024, MAX_BLOCK_SCORES // max(1, len(queries)))
    search = BlockSearch(queries, k, device=device, shortlist=shortlist)
    with open_input(path) as handle, pq.ParquetFile(handle) as parquet:
        for batch in parquet.iter_batches(batch_size=block_rows, columns=["pid", "embedding"]):
            vectors = embedding_matrix(batch.column("embedding"), keep_dtype=True)
            if vectors.shape[1] != queries.shape[1]:
                raise DataError(
                    f"{path}: corpus embeddings have {vectors.shape[1]} dimensions,"
                    f" query embeddings {queries.shape[1]}"
                )
            search.add(vectors, np.asarray(batch.column("pid").to_pylist(), dtype=str))
    return search.result()


def read_query_embeddings(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """All query ids and vectors of an embeddings directory, sorted by qid."""
    files = embedding_files(directory)
    if not files:
        raise DataError(f"{directory}: no query embeddings")
    table = pa.concat_tables(read_table(path) for path in files)
    qids = np.asarray(table.column("qid").to_pylist(), dtype=str)
    vectors = embedding_matrix(table.column("embedding"))
    order = np.argsort(qids, kind="stable")
    return qids[order], vectors[order]


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
        output_path: ``retrieval.parquet`` to write: ``qid, pid, rank, score``.
        k: Passages kept per query (fewer when the corpus is smaller).
        max_in_flight: Most tasks running at once, bounding the driver's pending results.
        device: The device policy (:func:`rerank_ray.pool.decide_device`): on ``cuda`` each
            task asks for one GPU (tensor-core bfloat16 products), which also makes an
            autoscaler launch GPU nodes; on ``cpu`` it asks for one CPU.

    Returns:
        Rows written, wall time and resources.
    """
    import ray

    started = time.perf_counter()
    qids, queries = read_query_embeddings(query_embeddings_dir)
    files = embedding_files(corpus_embeddings_dir)
    if not files:
        raise DataError(f"{corpus_embeddings_dir}: no corpus embeddings")
    plan = decide_device(device, cluster_gpus())
    num_gpus = 1 if plan.device == "cuda" else 0
    if max_in_flight is None:
        slots = plan.max_gpus if num_gpus else int(ray.cluster_resources().get("CPU", 2))
        max_in_flight = max(2, slots * 2)
    search_task = ray.remote(max_retries=3, num_cpus=1, num_gpus=num_gpus)(_search_task)
    queries_ref = ray.put(queries)
    result, pending, placements = None, [], []

    def merge(partial) -> None:
        nonlocal result
        top, placement = partial
        result = merge_topk(result, top, k)
        placements.append(placement)

    for path in files:
        if len(pending) >= max_in_flight:
            done, pending = ray.wait(pending, num_returns=1)
            merge(ray.get(done[0]))
        pending.append(search_task.remote(path, queries_ref, k))
    for partial in ray.get(pending):
        merge(partial)
    table = topk_table(qids, result)
    with atomic_path(output_path) as tmp:
        write_table(table, tmp)
    return StageStats(
        rows=table.num_rows,
        wall_seconds=time.perf_counter() - started,
        resources={
            "policy": plan.policy,
            "device": plan.device,
            "reason": plan.reason,
            "tasks": len(files),
            "num_gpus_per_task": num_gpus,
            "queries": len(qids),
            "nodes": len({p["node"] for p in placements}),
            "node_ids": sorted({p["node"] for p in placements}),
            "devices": sorted({p["device"] for p in placements}),
        },
    )


def _search_task(path: str, queries: np.ndarray, k: int) -> tuple[TopK, dict]:
    """:func:`search_file` in a Ray task, with where it ran (node, and the device torch chose)."""
    import ray

    from rerank_ray.models import pick_device

    device = pick_device()
    placement = {"node": ray.get_runtime_context().get_node_id(), "device": device}
    return search_file(path, queries, k, device=device), placement
