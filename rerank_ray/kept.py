"""The pairs an exact top-k search keeps, and their order: query row, score (descending), id.

:class:`KeptPairs` collects ``(query row, id, exact score)`` block by block
(:class:`rerank_ray.topk.BlockSearch` appends the pairs that reach a query's lower bound),
drops those below a query's k-th kept score when asked (:meth:`KeptPairs.compact`), and gives
the top-k per query (:meth:`KeptPairs.top`), with the queries whose result cannot be trusted
(fewer than k, or a k-th below the bound they dropped pairs against) set apart.

Example:
    >>> import numpy as np, pyarrow as pa
    >>> kept = KeptPairs(num_queries=2)
    >>> kept.append(np.array([1, 0, 1]), pa.array(["b", "x", "a"]), np.array([2.0, 1.0, 2.0]))
    >>> top = kept.top(k=1, seen=3, claimed=np.array([-np.inf, -np.inf]))
    >>> top.rows.tolist(), top.ids.to_pylist(), top.failed.tolist()
    ([0, 1], ['x', 'a'], [])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Ranked:
    """A search's result, flat: query ``rows`` ascending, each query's passages best first
    (ties by id), at most k each; ``failed``: the query rows left out, whose guessed lower
    bound proved too high."""

    rows: np.ndarray
    scores: np.ndarray
    ids: pa.Array
    failed: np.ndarray


class KeptPairs:
    """``(query row, id, float64 score)`` triples of ``num_queries`` queries, appended in blocks."""

    def __init__(self, num_queries: int):
        self.num_queries = num_queries
        self._rows: list[np.ndarray] = []
        self._ids: list[pa.Array] = []
        self._scores: list[np.ndarray] = []
        self.count = 0

    def append(self, rows: np.ndarray, ids: pa.Array, scores: np.ndarray) -> None:
        self._rows.append(rows)
        self._ids.append(ids)
        self._scores.append(scores)
        self.count += len(rows)

    def ordered(self) -> tuple[np.ndarray, np.ndarray, pa.Array]:
        """``(rows, scores, ids)`` by query row, then score (descending), then id."""
        import torch

        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        ids = pa.concat_arrays(self._ids) if self._ids else pa.array([], pa.string())
        # Grouped by row (a radix sort where rows fit 16 bits), then each row's scores sorted
        # in a dense (rows x most kept) matrix.
        narrow = rows.astype(np.uint16) if self.num_queries <= 1 << 16 else rows
        order = np.argsort(narrow, kind="stable")
        counts = np.bincount(rows, minlength=self.num_queries)
        starts = np.cumsum(counts) - counts
        slots = np.arange(len(rows)) - np.repeat(starts, counts)
        grouped = rows[order]
        shape = (self.num_queries, int(counts.max(initial=0)))
        dense = torch.full(shape, -torch.inf, dtype=torch.float64)
        where = torch.from_numpy(grouped), torch.from_numpy(slots)
        dense[where] = torch.from_numpy(scores[order])
        positions = torch.full(dense.shape, -1, dtype=torch.int64)
        positions[where] = torch.from_numpy(order)
        dense, within = torch.sort(dense, dim=1, descending=True, stable=True)
        order = torch.gather(positions, 1, within)[where].numpy()
        rows, scores = grouped, scores[order]
        ids = ids.take(pa.array(order))
        # Equal (row, score) runs go by id: only those are sorted by their strings.
        tied = np.flatnonzero((rows[1:] == rows[:-1]) & (scores[1:] == scores[:-1]))
        if len(tied):
            # Sorted among themselves by (row, score, id) into their own positions: nothing
            # else shares a (row, score) with them, so the order by (row, score) stands.
            members = np.unique(np.concatenate([tied, tied + 1]))
            names = np.asarray(ids.take(pa.array(members)).to_pylist(), dtype=str)
            within = members[np.lexsort((names, -scores[members], rows[members]))]
            order = np.arange(len(rows))
            order[members] = within
            rows, scores, ids = rows[order], scores[order], ids.take(pa.array(order))
        return rows, scores, ids

    def compact(self, k: int) -> np.ndarray:
        """Drop the pairs below their query's k-th kept score; returns those k-th scores
        (``-inf`` where a query has fewer than k)."""
        rows, scores, ids = self.ordered()
        first = np.searchsorted(rows, np.arange(self.num_queries + 1))
        counts = np.diff(first)
        kth = np.full(len(counts), -np.inf)
        full = counts >= k
        kth[full] = scores[first[:-1][full] + k - 1]
        keep = scores >= kth[rows]
        self._rows, self._scores, self._ids = [rows[keep]], [scores[keep]], [ids.filter(keep)]
        self.count = int(keep.sum())
        return kth

    def top(self, k: int, seen: int, claimed: np.ndarray) -> Ranked:
        """The best k pairs per query, of ``seen`` passages searched. A query is trusted
        (verified) when it has ``min(k, seen)`` pairs and its k-th score reaches ``claimed``,
        the largest lower bound it dropped pairs against; the others are ``failed``."""
        rows, scores, ids = self.ordered()
        first = np.searchsorted(rows, np.arange(self.num_queries + 1))
        counts = np.minimum(np.diff(first), k)
        position = np.arange(len(rows)) - first[rows]
        top = position < counts[rows]
        kth = np.where(counts > 0, scores[np.maximum(first[:-1] + counts - 1, 0)], -np.inf)
        complete = counts == min(k, seen)
        failed = np.flatnonzero(~(complete & (kth >= claimed)))
        keep = top & ~np.isin(rows, failed)
        return Ranked(rows[keep], scores[keep], ids.filter(pa.array(keep)), failed)
