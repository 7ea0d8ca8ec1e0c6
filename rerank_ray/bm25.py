"""BM25 first stage (``--retriever bm25``) through the ``bm25s`` library, and reciprocal-rank
fusion with the dense ranking (``--retriever hybrid``).

Tokenization is bm25s's: lower-cased words of two or more word characters, English stopwords
removed, English Snowball stemming (PyStemmer), the same for passages and queries. Scoring is
bm25s's Lucene variant, ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` and
``tf / (tf + k1 (1 - b + b |d| / avgdl))`` (Lucene drops the ``k1 + 1`` factor), with k1 = 0.9 and b = 0.4 by default
(Anserini's and Pyserini's defaults for MS MARCO passages). Each query's top ``k`` is the one
bm25s selects, ordered by score, ties by pid.

The index is not streamed: the corpus's texts, its tokens and the sparse score matrix are held
by the one Ray task that builds it (:func:`bm25_retrieval`), never by the driver.

Example::

    table = bm25_search("RUN/data/corpus.parquet", "RUN/data/queries.parquet", k=100,
                        options=BM25Options())
    table.column_names
    # ['qid', 'pid', 'rank', 'score']
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.errors import ConfigError
from rerank_ray.options import option
from rerank_ray.parquet import read_table
from rerank_ray.ranking import rank_by_score

#: What the retrieve stage can be.
RETRIEVERS = ("dense", "bm25", "hybrid")


@dataclass(frozen=True)
class BM25Options:
    """BM25's parameters, and the fusion's for the hybrid retriever.

    Args:
        k1: Term-frequency saturation.
        b: Length normalization.
        rrf_k: Reciprocal-rank fusion's constant: a passage scores ``Σ 1 / (rrf_k + rank)``
            over the rankings that hold it.
    """

    k1: float = option(0.9, "--bm25-k1", "BM25 term-frequency saturation", type=float, metavar="K1")
    b: float = option(0.4, "--bm25-b", "BM25 length normalization", type=float, metavar="B")
    rrf_k: int = option(
        60, "--rrf-k", "hybrid: reciprocal-rank fusion's constant", type=int, metavar="K"
    )

    def __post_init__(self):
        if not math.isfinite(self.k1) or self.k1 < 0:  # nan compares false with everything
            raise ConfigError(
                f"k1 must be a finite number of at least 0, got {self.k1}", BM25Options, "k1"
            )
        if not 0 <= self.b <= 1:
            raise ConfigError(f"b must be between 0 and 1, got {self.b}", BM25Options, "b")
        if self.rrf_k < 1:
            raise ConfigError(f"rrf_k must be at least 1, got {self.rrf_k}", BM25Options, "rrf_k")


def tokenize(texts: list[str]):
    """bm25s's tokenization with English stopwords and the English Snowball stemmer."""
    import bm25s
    import Stemmer

    return bm25s.tokenize(
        texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False
    )


def build_index(corpus_path: str, options: BM25Options):
    """The bm25s index of the corpus table and its pids, in index order."""
    import bm25s

    corpus = read_table(corpus_path, columns=["pid", "text"])
    pids = corpus.column("pid").to_pylist()
    retriever = bm25s.BM25(k1=options.k1, b=options.b, method="lucene")
    retriever.index(tokenize(corpus.column("text").to_pylist()), show_progress=False)
    return retriever, pids


def search_index(retriever, pids: list[str], queries_path: str, k: int) -> pa.Table:
    """Each query's top ``k`` passages of the index as ``qid, pid, rank, score``."""
    queries = read_table(queries_path, columns=["qid", "text"])
    pids = np.asarray(pids, dtype=object)
    depth = min(k, len(pids))
    query_tokens = tokenize(queries.column("text").to_pylist())
    documents, scores = retriever.retrieve(query_tokens, k=depth, show_progress=False)
    qids = queries.column("qid").to_numpy(zero_copy_only=False)
    rows = pa.table(
        {
            "qid": np.repeat(qids, depth),
            "pid": pids[np.asarray(documents).reshape(-1)],
            "score": np.asarray(scores, dtype=np.float32).reshape(-1),
        }
    )
    return rank_by_score(rows)


def bm25_search(corpus_path: str, queries_path: str, k: int, options: BM25Options) -> pa.Table:
    """Each query's top ``k`` passages by BM25 as ``qid, pid, rank, score``."""
    return search_index(*build_index(corpus_path, options), queries_path, k)


def index_key(corpus_hash: str, options: BM25Options) -> str:
    """The cache key of an index: the corpus's content, k1, b, the library and tokenization."""
    from rerank_ray.keys import digest

    payload = {"corpus": corpus_hash, "k1": options.k1, "b": options.b, "index": index_version()}
    return digest(payload)


def cached_index(cache_root: str | None, corpus_hash: str, corpus_path: str, options):
    """``(retriever, pids, how)``: the index from the cache under ``cache_root`` (a local
    folder) when an entry verifies, else built and stored there; ``how`` says which."""
    import os
    import shutil
    import tempfile

    import bm25s

    from rerank_ray.cache import EmbeddingCache
    from rerank_ray.io import is_uri
    from rerank_ray.parquet import write_table

    if not cache_root or not corpus_hash or is_uri(cache_root):
        return (*build_index(corpus_path, options), "built, not cached")
    cache = EmbeddingCache(cache_root, kind="bm25")
    key = index_key(corpus_hash, options)
    entry = cache.lookup(key, None)
    if entry is not None:
        pids = read_table(os.path.join(entry, "pids.parquet")).column("pid").to_pylist()
        return bm25s.BM25.load(entry, mmap=True), pids, f"from the cache {entry}"
    retriever, pids = build_index(corpus_path, options)
    staging = tempfile.mkdtemp(prefix="rerank-ray-bm25-")
    try:
        retriever.save(staging)
        write_table(
            pa.table({"pid": pa.array(pids, pa.string())}), os.path.join(staging, "pids.parquet")
        )
        stored = cache.store(key, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return retriever, pids, f"built, cached at {stored}" if stored else "built, not cached"


def reciprocal_rank_fusion(rankings: list[pa.Table], k: int, rrf_k: int) -> pa.Table:
    """Fuse ``qid, pid, rank, score`` rankings: a passage's score is ``Σ 1 / (rrf_k + rank)``
    over the rankings that hold it; each query's top ``k``, ties by pid.

    Example:
        >>> a = pa.table({"qid": ["q", "q"], "pid": ["x", "y"], "rank": [1, 2], "score": [9.0, 8.0]})
        >>> b = pa.table({"qid": ["q", "q"], "pid": ["y", "z"], "rank": [1, 2], "score": [5.0, 4.0]})
        >>> reciprocal_rank_fusion([a, b], k=2, rrf_k=60).column("pid").to_pylist()
        ['y', 'x']
    """
    contributions = [
        pa.table(
            {
                "qid": table.column("qid"),
                "pid": table.column("pid"),
                "score": pc.divide(1.0, pc.add(pc.cast(table.column("rank"), pa.float64()), rrf_k)),
            }
        )
        for table in rankings
    ]
    fused = pa.concat_tables(contributions).group_by(["qid", "pid"]).aggregate([("score", "sum")])
    return rank_by_score(fused.rename_columns(["qid", "pid", "score"]), k)


def index_version() -> str:
    """What the BM25 scores depend on besides the corpus and k1, b: the library and the
    tokenization."""
    from importlib.metadata import version

    return (
        f"bm25s {version('bm25s')}, lucene, english stopwords, PyStemmer"
        f" {version('PyStemmer')} english"
    )


def bm25_retrieval(
    corpus_path: str,
    queries_path: str,
    out_path: str,
    k: int,
    options: BM25Options,
    dense_from: tuple[str, str] | None = None,
    device: str = "auto",
    cache_root: str | None = None,
    corpus_hash: str = "",
) -> dict:
    """BM25's top ``k`` per query written to ``out_path`` (``retrieval.parquet``); for a
    hybrid, fused by reciprocal rank with the dense top ``k`` over ``dense_from`` (the corpus
    and query embedding directories: :func:`rerank_ray.search.exact_search` on ``device``,
    into a temporary file removed afterwards).

    BM25 runs as one Ray task, which holds the index; the driver holds nothing of the corpus.
    The index is reused from, or stored in, the cache under ``cache_root`` (on the task's
    node; keyed by ``corpus_hash`` and the BM25 options: :func:`cached_index`).
    Returns the stage's statistics.
    """
    import ray

    from rerank_ray.io import discard, temporary_sibling
    from rerank_ray.search import exact_search

    stats: dict = {}
    dense = temporary_sibling(out_path) if dense_from else None
    try:
        if dense:
            stats["dense"] = exact_search(*dense_from, dense, k=k, device=device).to_dict()
        task = ray.remote(num_cpus=1, max_retries=1)(_bm25_in_task)
        found = ray.get(
            task.remote(
                corpus_path, queries_path, out_path, k, options, dense, cache_root, corpus_hash
            )
        )
    finally:
        if dense:
            discard(dense)
    return {**stats, **found}


def _bm25_in_task(
    corpus_path, queries_path, out_path, k, options, dense_path, cache_root, corpus_hash
) -> dict:
    """The task's body: index (cached), rank, fuse, publish ``out_path`` whole."""
    import time

    from rerank_ray.io import atomic_path
    from rerank_ray.parquet import write_table

    started = time.perf_counter()
    retriever, pids, how = cached_index(cache_root, corpus_hash, corpus_path, options)
    ranking = search_index(retriever, pids, queries_path, k)
    stats = {"bm25_seconds": round(time.perf_counter() - started, 3), "index": how}
    if dense_path is not None:
        dense = read_table(dense_path, columns=["qid", "pid", "rank", "score"])
        ranking = reciprocal_rank_fusion([dense, ranking], k, options.rrf_k)
    with atomic_path(out_path) as tmp:
        write_table(ranking, tmp)
    return {**stats, "rows": ranking.num_rows}
