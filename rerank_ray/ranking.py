"""Rankings: per-query top-k results, how two are merged, and their Parquet files.

``retrieval.parquet`` holds one row per ``(qid, pid)`` with its 1-based ``rank`` and its
``score`` (:data:`RETRIEVAL_SCHEMA`); a reranker's ``rerank/<system>.parquet`` has these
columns and more, and :func:`read_ranking` reads either. In memory, a top-k is a pair of ``(num_queries, <= k)``
arrays (:class:`TopK`), best first, ties broken by id.

Example:
    >>> import numpy as np
    >>> first = TopK(np.array([[3.0, 1.0]]), np.array([["a", "b"]]))
    >>> second = TopK(np.array([[2.0, 1.0]]), np.array([["c", "a0"]]))
    >>> merge_topk(first, second, k=3).ids.tolist()
    [['a', 'c', 'a0']]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rerank_ray.parquet import read_table

RETRIEVAL_SCHEMA = pa.schema(
    [("qid", pa.string()), ("pid", pa.string()), ("rank", pa.int32()), ("score", pa.float32())]
)


@dataclass(frozen=True)
class TopK:
    """Per-query top-k: ``scores`` (float64) and ``ids`` of shape ``(num_queries, <= k)``."""

    scores: np.ndarray
    ids: np.ndarray


def _order_by_score_then_id(scores: np.ndarray, ids: np.ndarray, k: int) -> TopK:
    order = np.lexsort((ids, -scores), axis=1)[:, :k]
    return TopK(np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1))


def merge_topk(first: TopK | None, second: TopK, k: int) -> TopK:
    """The top-k of two partial top-k results over disjoint parts of the corpus."""
    if first is None:
        return second
    return _order_by_score_then_id(
        np.concatenate([first.scores, second.scores], axis=1),
        np.concatenate([first.ids, second.ids], axis=1),
        k,
    )


def topk_table(qids: np.ndarray, result: TopK) -> pa.Table:
    """A long ``qid, pid, rank, score`` table from per-query top-k arrays."""
    num_queries, width = result.ids.shape
    return pa.table(
        {
            "qid": np.repeat(qids, width),
            "pid": result.ids.reshape(-1),
            "rank": np.tile(np.arange(1, width + 1, dtype=np.int32), num_queries),
            "score": result.scores.reshape(-1).astype(np.float32),
        },
        schema=RETRIEVAL_SCHEMA,
    )


def rank_by_score(table: pa.Table, k: int | None = None, ties: str = "ascending") -> pa.Table:
    """``qid, pid, score`` rows ranked within each query by score (descending), ties by pid
    in ``ties`` order, numbered from 1 and cut to ``k`` a query: a :data:`RETRIEVAL_SCHEMA`
    table ordered by qid and rank. Scores are compared as given, stored as float32.

    Example:
        >>> rows = pa.table({"qid": ["q", "q", "p"], "pid": ["b", "a", "c"], "score": [1.0, 1.0, 0.5]})
        >>> rank_by_score(rows).to_pydict()["pid"], rank_by_score(rows, ties="descending", k=1).to_pydict()["pid"]
        (['c', 'a', 'b'], ['c', 'b'])
    """
    import pyarrow.compute as pc

    ordered = table.select(["qid", "pid", "score"]).sort_by(
        [("qid", "ascending"), ("score", "descending"), ("pid", ties)]
    )
    qids = ordered.column("qid").to_numpy(zero_copy_only=False)
    position = np.arange(len(qids))
    first_of_query = np.r_[True, qids[1:] != qids[:-1]] if len(qids) else np.zeros(0, bool)
    ranks = position - np.maximum.accumulate(np.where(first_of_query, position, 0)) + 1
    ranked = pa.table(
        {
            "qid": ordered.column("qid").cast(pa.string()),
            "pid": ordered.column("pid").cast(pa.string()),
            "rank": pa.array(ranks, type=pa.int32()),
            "score": ordered.column("score").cast(pa.float32()),
        },
        schema=RETRIEVAL_SCHEMA,
    )
    return ranked if k is None else ranked.filter(pc.less_equal(ranked.column("rank"), k))


def read_ranking(path: str) -> dict[str, list[str]]:
    """``{qid: [pid, ...]}`` in rank order from ``retrieval.parquet`` or a ``rerank/<system>.parquet``."""
    table = read_table(path, columns=["qid", "pid", "rank"]).sort_by(
        [("qid", "ascending"), ("rank", "ascending")]
    )
    ranking: dict[str, list[str]] = {}
    for qid, pid in zip(table.column("qid").to_pylist(), table.column("pid").to_pylist()):
        ranking.setdefault(qid, []).append(pid)
    return ranking
