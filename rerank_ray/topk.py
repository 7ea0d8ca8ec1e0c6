"""The exact inner-product top-k kernel: fixed queries, corpus vectors added block by block.

:class:`BlockSearch` keeps, for every query, the passages that can still be in its top-k and
their exact scores. Per block, a bfloat16 matrix product shortlists the pairs that can reach
a query's *lower bound* (a value its final k-th exact score is known, or guessed, to reach),
and only those are scored exactly:

* ``approx = bf16(q) . bf16(d)`` (float32 accumulation, bfloat16 output) differs from the
  exact ``q . d`` by at most ``error + relative |approx|``: ``error`` bounds the inputs'
  rounding by Cauchy-Schwarz (``|bf16(q)| |d - bf16(d)| + |q - bf16(q)| |bf16(d)| + ...``,
  with the queries' residuals measured once and the passages' measured per block, never
  above ``u |d|``, ``u = 2^-8``) plus the float32 accumulation (``1.01 n 2^-24 |q| |d|`` for
  ``n`` dimensions); ``relative`` is the rounding of the float32 sum to bfloat16
  (``u / (1 - u)``). Norms are the block's largest, padded by 0.1 %.
* A pair whose exact score reaches the lower bound ``L`` has ``approx + error + relative
  |approx| >= L``, a bar on ``approx`` alone (rounded down to bfloat16 before comparing): every
  pair under the bar scores below ``L``. The bar is checked on tiles of the product that stay
  in cache: the largest ``approx`` of each group of columns first, then the columns of the
  groups that reach it.
* Shortlisted pairs are scored in float64 from the stored vectors and kept if they reach
  ``L``.

The lower bound of a query is the larger of

* a **proven** one: the k-th best exact score kept (any k passages bound the final k-th from
  below; raised as the kept pairs are compacted), or the k-th best ``approx`` of a block
  less its error (the block's k best pairs score at least that, exactly);
* a **guess** (:meth:`BlockSearch.estimate`): from a sample of the corpus, the ``approx``
  that about ``k * sample / corpus`` pairs of the sample reach, raised by a margin of
  sampling error. It skips the passages that a running bound would still admit while it
  rises, but nothing proves it.

Every dropped pair scored below the lower bound in force, and each query remembers the largest
bound it dropped pairs against (``claimed``). At the end a query is **verified** when its k-th
exact score reaches ``claimed``: every dropped pair then scores below the k-th, so it can be
neither in the top-k nor tied with it. A query whose guess was too high is reported
(:meth:`BlockSearch.ranked`) and searched again without a guess, by the caller.

So the result is exactly the top-k by float64 score, ties broken by id (ascending), while the
full product runs at bfloat16 speed (AMX or AVX512-BF16 on CPUs, tensor cores on a GPU with
bfloat16 reductions switched off). ``shortlist=False`` shortlists with a float32 product
instead (bound: the accumulation only) for machines without fast bfloat16 products; the
result is the same. The tests check the bound itself, each term of it, and the results against
float64 brute force.

Example:
    >>> import numpy as np
    >>> search = BlockSearch(np.array([[1.0, 0.0]], dtype=np.float32), k=2)
    >>> search.add(np.array([[0.5, 0], [0.9, 0], [0.5, 1]], dtype=np.float32), np.array(["c", "a", "b"]))
    >>> search.result().ids.tolist()
    [['a', 'b']]
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from rerank_ray.kept import KeptPairs, Ranked
from rerank_ray.ranking import TopK

#: Scores of one tile of the product (4 MiB of bfloat16): the bar is checked while it is in cache.
TILE_SCORES = 1 << 21

#: Columns of a tile (its rows: ``TILE_SCORES`` divided by this, so 512 queries).
TILE_COLUMNS = 4096

#: Columns whose largest score is compared first; their columns only when it reaches the bar.
GROUP = 32

#: Rounding a float32 sum to bfloat16 (round to nearest): ``|x - a| <= u |a| / (1 - u)``.
BFLOAT16_OUTPUT_ROUNDING = 2.0**-8 / (1 - 2.0**-8)

#: bfloat16's unit roundoff: rounding to nearest moves a value by at most this much of it.
BFLOAT16_UNIT = 2.0**-8

#: Absolute slack for vectors so small that bfloat16 flushes them to zero.
_TINY = 1e-30

#: Standard deviations of sampling error a guessed lower bound leaves below it.
GUESS_MARGIN = 5.0

#: Values a guess may climb to during a pass (:meth:`BlockSearch._climb`).
LADDER = 12


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


def guess_rank(k: int, sample: int, total: int) -> int:
    """The rank in a sample of ``sample`` of ``total`` passages whose score a query's k-th
    score over all of them is guessed to reach: the expected rank of that k-th in the sample
    plus :data:`GUESS_MARGIN` standard deviations (a Poisson count) and one."""
    expected = k * sample / total
    return math.ceil(expected + GUESS_MARGIN * math.sqrt(expected) + 1)


class BlockSearch:
    """The exact top-k of fixed queries over corpus vectors added block by block.

    Args:
        queries: ``(num_queries, dim)`` query vectors (float32 or float16).
        k: Passages kept per query (fewer while fewer have been added).
        device: ``cuda`` or ``cpu``; default: what torch sees.
        shortlist: Shortlist with a bfloat16 product (exact either way; see the module).
        group: Columns compared as one by their largest score (:data:`GROUP`).
        tile_columns: Columns of a tile of the product (:data:`TILE_COLUMNS`).

    Example:
        >>> import numpy as np
        >>> search = BlockSearch(np.eye(2, dtype=np.float32), k=1)
        >>> search.add(np.array([[2.0, 1.0]], dtype=np.float32), np.array(["x"]))
        >>> search.add(np.array([[1.0, 3.0]], dtype=np.float32), np.array(["y"]))
        >>> search.result().ids.tolist(), search.result().scores.tolist()
        ([['x'], ['y']], [[2.0], [3.0]])
    """

    def __init__(
        self,
        queries: np.ndarray,
        k: int,
        device: str | None = None,
        shortlist: bool = True,
        group: int = GROUP,
        tile_columns: int = TILE_COLUMNS,
    ):
        import torch

        from rerank_ray.models import pick_device

        self.k = k
        self.shortlist = shortlist
        self.group = group
        self.tile_columns = tile_columns
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
        minus_inf = torch.full((num_queries,), -torch.inf, dtype=torch.float64, device=self.device)
        self._proven = minus_inf  # a lower bound of each query's final k-th exact score
        self._guess = None  # or a guessed one, checked by ``claimed`` at the end
        self._ladder = None  # higher values the guess may climb to (:meth:`_climb`)
        self._claimed = minus_inf.clone()  # the largest lower bound a pair was dropped against
        self._kept = KeptPairs(num_queries)
        self._buffers: dict = {}
        self.seen = 0
        self.shortlisted = 0
        self.seconds = {"shortlist": 0.0, "rescore": 0.0, "select": 0.0}  # CPU seconds

    # -- lower bounds -------------------------------------------------------------------------

    def estimate(self, sample: np.ndarray, total: int) -> None:
        """Raise the lower bounds from ``sample``, vectors drawn from a corpus of ``total``.

        Proven, where the sample has k vectors: its k-th best ``approx`` less the error (its k
        best pairs score at least that exactly, and the corpus's k-th at least theirs). Guessed,
        where :func:`guess_rank` is below k (a sample much smaller than the corpus): the
        ``approx`` of that rank.
        """
        import torch

        rank = guess_rank(self.k, len(sample), total) if total > self.k else self.k
        guessing = rank < self.k and rank <= len(sample)
        if len(sample) < self.k and not guessing:
            return
        started = time.process_time()
        block = self._to_device(sample)
        error, relative, short = self._bound(block)
        # With a guess, the sample's k-th would bound nothing the guess does not: not sought.
        deepest = rank if guessing else self.k
        height = max(1, (4 * TILE_SCORES) // len(block))
        tops = []
        for start in range(0, len(self._queries), height):
            end = min(start + height, len(self._queries))
            tops.append(torch.topk(self._product(short, start, end), deepest, dim=1).values)
        top = torch.cat(tops).double()
        if not guessing:
            kth = top[:, self.k - 1]
            self._proven = torch.maximum(self._proven, kth - error - relative * kth.abs())
        else:
            self._guess = top[:, rank - 1]
            # Higher rungs: the sample's scores from the guess's rank up to below the expected
            # rank of the k-th, counted as the pass goes (:meth:`_climb`).
            expected = self.k * len(sample) / total
            ranks = np.linspace(rank, max(1.0, 0.75 * expected), LADDER).round().astype(int)
            self._ladder = top[:, torch.from_numpy(np.unique(ranks)[::-1].copy() - 1)]
            self._above = torch.zeros(self._ladder.shape, dtype=torch.int64, device=self.device)
            self._total = total
        self.seconds["shortlist"] += time.process_time() - started

    def _climb(self, rows, scores) -> None:
        """Raise the guess to the highest rung that enough passages seen so far reach.

        A rung reached by at least :func:`guess_rank` of the ``seen`` passages is, as the
        sample's guess was, a guess of a value the k-th score reaches; counting over ever more
        passages, the margin it needs shrinks (relative to the count) as the pass goes.
        """
        import torch

        reach = (scores[:, None] >= self._ladder[rows]).to(torch.int64)
        self._above.index_add_(0, rows, reach)
        need = guess_rank(self.k, min(self.seen, self._total), self._total)
        highest = (self._above >= need).sum(dim=1) - 1  # rungs ascend, counts descend
        climbed = highest >= 0
        if bool(climbed.any()):
            rung = self._ladder.gather(1, highest.clamp(min=0)[:, None])[:, 0]
            self._guess = torch.where(climbed, torch.maximum(self._guess, rung), self._guess)

    def _lower(self):
        if self._guess is None:
            return self._proven
        import torch

        return torch.maximum(self._proven, self._guess)

    # -- one block ----------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, ids) -> None:
        """Score a block of corpus vectors ``(n, dim)`` with ids ``(n,)`` (a numpy or Arrow
        array) against all queries."""
        import torch

        if len(ids) == 0:
            return
        block = self._to_device(vectors)
        if self._guess is None and len(block) >= self.k and bool(torch.isinf(self._proven).any()):
            self.estimate(vectors, len(block))  # the block's own k-th: a proven bound
        lower = self._lower()
        started = time.process_time()
        rows, columns = self._candidates(block, lower)
        self._claimed = torch.maximum(self._claimed, lower)
        rescoring = time.process_time()
        scores = self._exact_scores(rows, columns, block)
        selecting = time.process_time()
        passing = scores >= lower[rows]  # ties with the bound stay: they go by id at the end
        rows, columns, scores = rows[passing], columns[passing], scores[passing]
        self.seen += len(block)
        if self._ladder is not None:
            self._climb(rows, scores)
        columns = columns.cpu().numpy()
        ids = ids.take(pa.array(columns)) if isinstance(ids, pa.Array) else np.asarray(ids)[columns]
        ids = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
        self._kept.append(rows.cpu().numpy(), ids, scores.cpu().numpy())
        self.shortlisted += len(passing)
        if self._kept.count > 3 * self._queries.shape[0] * self.k:
            # The k-th kept scores: a proven bound (any k passages bound the final k-th).
            kth = torch.from_numpy(self._kept.compact(self.k)).to(self.device)
            self._proven = torch.maximum(self._proven, kth)
        self.seconds["shortlist"] += rescoring - started
        self.seconds["rescore"] += selecting - rescoring
        self.seconds["select"] += time.process_time() - selecting

    def _to_device(self, vectors):
        import torch

        with warnings.catch_warnings():
            # Blocks read from Parquet are read-only views; the kernel only reads them, so it
            # keeps the view instead of copying every block.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(vectors)).to(self.device)

    def _bound(self, block):
        """``(error, relative, short)`` for ``block``: ``|exact - approx| <= error[q] +
        relative |approx|`` for every pair, and the block as the product's input dtype."""
        import torch

        size, dim = block.shape
        accumulation = 1.01 * dim * 2.0**-24  # float32 sums of dim products
        if block.dtype != torch.float32:  # float16 storage: widened into a reused buffer
            block = self._buffer("block float32", (size, dim), torch.float32).copy_(block)
        norm = block.norm(dim=1).max().double() * 1.001
        if not self.shortlist:
            return accumulation * self._query_norms * norm + _TINY, 0.0, block
        short = self._buffer("short", (size, dim), torch.bfloat16)
        short.copy_(block)
        # A passage's residual measured: |d - bf16(d)| <= u |d| always, and less in practice.
        wide = self._buffer("residual", (size, dim), torch.float32)
        wide.copy_(short).sub_(block)
        residual = torch.minimum(wide.norm(dim=1).max().double() * 1.001, norm * BFLOAT16_UNIT)
        short_norm = norm + residual
        # The inputs' rounding, Cauchy-Schwarz on each term of
        # q.d - bf16(q).bf16(d) = bf16(q).(d - bf16(d)) + (q - bf16(q)).bf16(d) + (q - bf16(q)).(d - bf16(d)).
        error = (
            self._short_norms * residual
            + self._residual_norms * short_norm
            + self._residual_norms * residual
            + accumulation * self._short_norms * short_norm
            + _TINY
        )
        return error, BFLOAT16_OUTPUT_ROUNDING, short

    def _product(self, short, start, end, columns=slice(None), out=None):
        """``approx`` of queries ``start:end`` against the rows ``columns`` of ``short``."""
        import torch

        queries = self._queries_short if self.shortlist else self._queries_float
        with _float32_accumulation(short.device):
            return torch.mm(queries[start:end], short[columns].T, out=out)

    def _approximate(self, block):
        """Approximate scores of all queries against ``block`` and their error bound.

        Returns ``(approx, error, relative)`` with ``|exact - approx| <= error + relative *
        |approx|`` for every pair: ``error`` per query (float64), ``relative`` a number.
        """
        error, relative, short = self._bound(block)
        return self._product(short, 0, len(self._queries)), error, relative

    def _candidates(self, block, lower):
        """``(rows, columns)`` of the pairs whose ``approx`` reaches the bar of ``lower``."""
        import torch

        error, relative, short = self._bound(block)
        # exact <= approx + error + relative * |approx|, so exact >= lower needs approx >= bar:
        gap = lower - error
        bar = torch.where(gap >= 0, gap / (1 + relative), gap / (1 - relative))
        dtype = torch.bfloat16 if self.shortlist else torch.float32
        bar = _round_down(bar, dtype)
        size = short.shape[0]
        width = min(size, self.tile_columns)
        height = max(1, TILE_SCORES // width)
        found_rows, found_columns = [], []
        for start in range(0, len(self._queries), height):
            end = min(start + height, len(self._queries))
            for first in range(0, size, width):
                last = min(first + width, size)
                approx = self._buffer("tile", (end - start, last - first), dtype)
                self._product(short, start, end, slice(first, last), out=approx)
                rows, columns = self._screen(approx, bar[start:end])
                found_rows.append(rows + start)
                found_columns.append(columns + first)
        return torch.cat(found_rows), torch.cat(found_columns)

    def _screen(self, approx, bar):
        """``(rows, columns)`` of a tile's entries at or above their row's ``bar``.

        Each row's columns ``j, j + m, j + 2m, ...`` (``m`` = columns / group) form a group,
        compared first by its largest entry: only groups that reach the bar are looked into.
        """
        import torch

        height, width = approx.shape
        if approx.dtype == torch.bfloat16 and bool((bar > 0).all()):
            # Positive bfloat16 values order as their bits do, and a negative value's bits read
            # as a negative int16: integer comparisons and maxima, twice as fast.
            approx, bar = approx.view(torch.int16), bar.view(torch.int16)
        elif approx.dtype == torch.bfloat16:
            approx, bar = approx.float(), bar.float()  # exact; numpy has no bfloat16
        stride = width // self.group
        if width % self.group or stride < 2:
            return _nonzero(approx >= bar[:, None])
        largest = torch.amax(approx.view(height, self.group, stride), dim=1)
        if approx.device.type != "cpu":
            rows, groups = _nonzero(largest >= bar[:, None])
            columns = groups[:, None] + stride * torch.arange(self.group, device=approx.device)
            reach = approx[rows[:, None], columns] >= bar[rows][:, None]
            return rows[:, None].expand_as(columns)[reach], columns[reach]
        # On the CPU, numpy's flat gathers are several times faster than torch's indexing.
        bar = bar.numpy()
        hits = np.flatnonzero(largest.numpy() >= bar[:, None])
        rows, groups = hits // stride, hits % stride
        flat = (rows * width + groups)[:, None] + stride * np.arange(self.group)
        reach = np.flatnonzero(approx.numpy().ravel()[flat] >= bar[rows][:, None])
        flat = flat.ravel()[reach]
        return torch.from_numpy(flat // width), torch.from_numpy(flat % width)

    def _buffer(self, name: str, shape: tuple[int, int], dtype):
        """A reused tensor of ``shape``: fresh allocations cost page faults per block."""
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
        # On a CPU 128 pairs at 384 dimensions, so that the buffers stay in L2.
        chunk = max(64, (3 << (15 if block.device.type == "cpu" else 18)) // dim)
        scores = torch.empty(len(rows), dtype=torch.float64, device=self.device)
        queries = self._buffer("gathered queries", (chunk, dim), torch.float64)
        passages = self._buffer("gathered passages", (chunk, dim), block.dtype)
        if block.device.type == "cpu":
            # Gathered by torch into reused buffers; numpy's einsum then widens the stored
            # side as it multiplies and adds, in one pass.
            out, left, right = scores.numpy(), queries.numpy(), passages.numpy()
            for start in range(0, len(rows), chunk):
                end = min(start + chunk, len(rows))
                count = end - start
                torch.index_select(self._queries, 0, rows[start:end], out=queries[:count])
                torch.index_select(block, 0, columns[start:end], out=passages[:count])
                out[start:end] = np.einsum("ij,ij->i", left[:count], right[:count])
            return scores
        wide = self._buffer("gathered passages float64", (chunk, dim), torch.float64)
        for start in range(0, len(rows), chunk):
            end = min(start + chunk, len(rows))
            count = end - start
            torch.index_select(self._queries, 0, rows[start:end], out=queries[:count])
            torch.index_select(block, 0, columns[start:end], out=passages[:count])
            wide[:count].copy_(passages[:count])
            torch.sum(queries[:count].mul_(wide[:count]), dim=1, out=scores[start:end])
        return scores

    # -- the result ---------------------------------------------------------------------------

    def ranked(self) -> Ranked:
        """The top-k per query, best first, ties by id; scores are float64 inner products.
        Queries whose guess proved too high are ``failed`` (:meth:`KeptPairs.top`)."""
        started = time.process_time()
        ranked = self._kept.top(self.k, self.seen, self._claimed.cpu().numpy())
        self.seconds["select"] += time.process_time() - started
        return ranked

    def result(self) -> TopK:
        """:meth:`ranked` as ``(num_queries, width)`` arrays (ids as strings).

        Raises:
            RuntimeError: a query's guessed lower bound was too high (see :meth:`ranked`).
        """
        ranked = self.ranked()
        if len(ranked.failed):
            raise RuntimeError(f"queries {ranked.failed.tolist()} need a search without a guess")
        num_queries = self._queries.shape[0]
        width = min(self.k, self.seen)
        ids = np.asarray(ranked.ids.to_pylist(), dtype=str)
        if width == 0 or len(ids) == 0:
            return TopK(np.zeros((num_queries, 0)), np.zeros((num_queries, 0), dtype=str))
        return TopK(ranked.scores.reshape(num_queries, width), ids.reshape(num_queries, width))


def _nonzero(mask):
    """``(rows, columns)`` of a 2-D mask's true entries, in row-major order."""
    import torch

    if mask.device.type != "cpu":
        return torch.nonzero(mask, as_tuple=True)
    flat = torch.from_numpy(np.flatnonzero(mask.numpy()))  # 2x torch.nonzero on CPU
    return flat // mask.shape[1], flat % mask.shape[1]
