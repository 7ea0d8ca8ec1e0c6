"""The rerank stage: retrieved candidates → (query, passage) pairs → a cross-encoder actor pool.

Pairs are formed with a broadcast join: the candidates (``queries x rerank_top_k`` rows, with
their query text) are small and go to every task through the object store, while the corpus
streams past once as Ray Data blocks; each block keeps the passages that are candidates and
becomes pairs. The pairs flow into a pool of actors that each load the cross-encoder once,
and Ray Data writes the scores. The driver then ranks the scored candidates per query (a
table the size of ``retrieval.parquet``) into the system's ``rerank/<system>.parquet``
(:mod:`rerank_ray.systems`: one file per reranker, each scored once).

Example::

    stats = rerank_candidates("RUN/retrieval.parquet", "RUN/data/corpus.parquet",
                              "RUN/data/queries.parquet", "RUN/rerank/minilm-smoke.parquet",
                              RerankOptions(models="minilm-smoke"))
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.bi_encoder import BiEncoderScorer, is_bi_encoder
from rerank_ray.cross_encoder import CrossEncoder, sigmoid
from rerank_ray.errors import ConfigError
from rerank_ray.io import atomic_path, discard, temporary_sibling
from rerank_ray.options import option
from rerank_ray.parquet import read_dataset, read_table, write_dataset, write_table
from rerank_ray.pool import (
    ActorResources,
    StageStats,
    announce_actor,
    collect_counters,
    map_with_actor_pool,
    plan_resources,
    report_counts,
)
from rerank_ray.systems import KEY_METADATA, system_name, system_stem

RERANK_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("pid", pa.string()),
        ("rank", pa.int32()),
        ("score", pa.float32()),
        ("relevance_score", pa.float32()),
        ("retrieval_rank", pa.int32()),
    ]
)
DEFAULT_RERANKER = "BAAI/bge-reranker-large"


def parse_depths(text: str) -> tuple[int, ...]:
    """``"10,20,50"`` → ``(10, 20, 50)``.

    Example:
        >>> parse_depths("20, 10,50")
        (20, 10, 50)
    """
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a comma-separated list of depths (whole numbers, e.g. 10,20,50)"
        ) from None


@dataclass(frozen=True)
class RerankOptions:
    """How candidates are rescored.

    Args:
        models: The rerankers, each scored over the same candidates into its own system
            (:func:`system_name`): ``minilm-smoke``, a local directory, a Hub name or
            ``bi:EMBEDDER``; ``("none",)`` skips the stage. A single name may be given as a
            string.
        top_k: Candidates reranked per query (the top of the retrieval); ``None``: all.
        max_length: Token limit of a (query, passage) pair, as ``FlagReranker``'s.
        batch_size: Most pairs per forward pass.
        max_tokens_per_batch: Most padded tokens per forward pass.
        depths: Also evaluate reranking only the top ``d`` of each query, for each ``d``.

    Example:
        >>> RerankOptions(models=("BAAI/bge-reranker-large", "bi:minilm")).systems
        {'bge-reranker-large': 'BAAI/bge-reranker-large', 'bi:minilm': 'bi:minilm'}
    """

    models: tuple[str, ...] = option(
        (DEFAULT_RERANKER,),
        "--reranker",
        "cross-encoder (Hub name, local directory, 'minilm-smoke' for tests), bi:EMBEDDER to"
        " rescore by an embedding model's inner products, or none; repeat it to compare"
        f" several over the same candidates (default: {DEFAULT_RERANKER})",
        metavar="MODEL",
        path=True,
        repeat=True,
    )
    top_k: int | None = option(
        None, "--rerank-top-k", "rerank the top N retrieved (default: all)", type=int, metavar="N"
    )
    max_length: int = option(
        512, "--reranker-max-length", "pair token limit", type=int, metavar="TOKENS"
    )
    batch_size: int = option(
        32, "--reranker-batch-size", "most pairs per forward pass", type=int, metavar="N"
    )
    max_tokens_per_batch: int = 16_384
    depths: tuple[int, ...] | None = option(
        None,
        "--rerank-depths",
        "also evaluate reranking only the top D of each query, for each D (e.g. 10,20,50), from"
        " the stored scores: nothing is scored again",
        type=parse_depths,
        metavar="D,…",
    )

    def __post_init__(self):
        models = (self.models,) if isinstance(self.models, str) else tuple(self.models)
        object.__setattr__(self, "models", models)
        if not models:
            raise ConfigError("models: give a reranker, or none", RerankOptions, "models")
        if any(m.lower() == "none" for m in models) and len(models) > 1:
            raise ConfigError(
                "models: none (no reranking) cannot be combined with rerankers",
                RerankOptions,
                "models",
            )
        names = [system_name(m) for m in models]
        for name in names:
            if name == "retrieval" or names.count(name) > 1:
                raise ConfigError(
                    f"models: two systems would be named {name!r} (rerankers are named by"
                    " folder or Hub name; 'retrieval' is the retrieval's)",
                    RerankOptions,
                    "models",
                )
        stems = [system_stem(n) for n in names]
        if len(set(stems)) < len(stems):
            raise ConfigError(
                f"models: {', '.join(names)} would share a file name", RerankOptions, "models"
            )
        if self.depths is not None:
            object.__setattr__(self, "depths", tuple(sorted(set(self.depths))))
            if not self.depths or self.depths[0] < 1:
                raise ConfigError(
                    f"depths must be at least 1, got {self.depths}", RerankOptions, "depths"
                )
            if self.top_k is not None and self.depths[-1] > self.top_k:
                raise ConfigError(
                    f"depths: the deepest, {self.depths[-1]}, is deeper than top_k"
                    f" ({self.top_k} passages reranked per query)",
                    RerankOptions,
                    "depths",
                    "top_k",
                )
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}", RerankOptions, "top_k")
        if self.max_length < 2:
            raise ConfigError(
                f"max_length must be at least 2, got {self.max_length}", RerankOptions, "max_length"
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be at least 1, got {self.batch_size}", RerankOptions, "batch_size"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def reranks(self) -> bool:
        """Whether there is a reranker (not ``none``)."""
        return self.models[0].lower() != "none"

    @property
    def systems(self) -> dict[str, str]:
        """``{system name: model}`` of the rerankers, in the order given."""
        return {system_name(m): m for m in self.models} if self.reranks else {}

    @property
    def model(self) -> str:
        """The reranker of options that hold exactly one (what an actor scores with)."""
        if len(self.models) != 1:
            raise ValueError(f"several rerankers: {', '.join(self.models)}; score one at a time")
        return self.models[0]

    def only(self, model: str) -> RerankOptions:
        """These options with ``model`` as the only reranker."""
        return replace(self, models=(model,))


def candidate_count(retrieval_path: str, top_k: int | None) -> int:
    """How many (query, passage) pairs reranking the top ``top_k`` of each query scores."""
    ranks = read_table(retrieval_path, columns=["rank"]).column("rank")
    if top_k is None:
        return len(ranks)
    return int(pc.sum(pc.less_equal(ranks, top_k)).as_py() or 0)


def candidate_pairs_table(retrieval_path: str, queries_path: str, top_k: int | None) -> pa.Table:
    """``qid, pid, retrieval_rank, query`` for the top ``top_k`` retrieved passages per query."""
    retrieval = read_table(retrieval_path, columns=["qid", "pid", "rank"])
    if top_k is not None:
        retrieval = retrieval.filter(pc.less_equal(retrieval["rank"], top_k))
    queries = read_table(queries_path).rename_columns(["qid", "query"])
    candidates = retrieval.rename_columns(["qid", "pid", "retrieval_rank"]).join(
        queries, keys="qid", join_type="inner"
    )
    return candidates.combine_chunks()


def pairs_of_block(block: pa.Table, candidates: list) -> pa.Table:
    """The (query, passage) pairs of the corpus passages in ``block`` that are candidates.

    ``candidates`` is ``[ObjectRef]`` (wrapped, so Ray Data passes the reference and the
    table is fetched zero-copy from the local object store once per call).
    """
    import ray

    table = ray.get(candidates[0])
    passages = block.select(["pid", "text"])
    pairs = table.join(passages, keys="pid", join_type="inner")
    return pairs.select(["qid", "pid", "retrieval_rank", "query", "text"])


class RerankActor:
    """The callable class Ray Data runs in each actor: one pair scorer (a cross-encoder, or an
    embedding model for ``bi:`` rerankers), many batches."""

    def __init__(self, options: RerankOptions, threads: int = 1, counters=None):
        import torch

        self.counters = counters
        self._mark = None
        torch.set_num_threads(threads)
        if is_bi_encoder(options.model):  # the embedder's own max lengths, not a pair's
            self.scorer = BiEncoderScorer(
                options.model,
                batch_size=options.batch_size,
                max_tokens_per_batch=options.max_tokens_per_batch,
            )
        else:
            self.scorer = CrossEncoder(
                options.model,
                batch_size=options.batch_size,
                max_length=options.max_length,
                max_tokens_per_batch=options.max_tokens_per_batch,
            )
        announce_actor(counters, self.scorer.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        pairs = list(zip(batch.column("query").to_pylist(), batch.column("text").to_pylist()))
        scores = self.scorer.score(pairs)
        self.scorer.stats.busy_seconds += time.perf_counter() - started
        self._mark = report_counts(self.counters, self.scorer.stats, self._mark)
        return pa.table(
            {
                "qid": batch.column("qid"),
                "pid": batch.column("pid"),
                "retrieval_rank": batch.column("retrieval_rank"),
                "score": pa.array(scores, type=pa.float32()),
            }
        )


def rank_scored_pairs(scored: pa.Table) -> pa.Table:
    """Rank each query's pairs by score (descending), ties by retrieval rank; add the sigmoid."""
    ordered = scored.sort_by(
        [("qid", "ascending"), ("score", "descending"), ("retrieval_rank", "ascending")]
    )
    qids = ordered.column("qid").to_numpy(zero_copy_only=False)
    position = np.arange(len(qids))
    first_of_query = np.r_[True, qids[1:] != qids[:-1]] if len(qids) else np.zeros(0, bool)
    query_start = np.maximum.accumulate(np.where(first_of_query, position, 0))
    scores = ordered.column("score").to_numpy(zero_copy_only=False)
    return pa.table(
        {
            "qid": ordered.column("qid"),
            "pid": ordered.column("pid"),
            "rank": pa.array(position - query_start + 1, type=pa.int32()),
            "score": pa.array(scores, type=pa.float32()),
            "relevance_score": pa.array(sigmoid(scores), type=pa.float32()),
            "retrieval_rank": ordered.column("retrieval_rank").cast(pa.int32()),
        },
        schema=RERANK_SCHEMA,
    )


def rerank_candidates(
    retrieval_path: str,
    corpus_path: str,
    queries_path: str,
    output_path: str,
    options: RerankOptions,
    resources: ActorResources | None = None,
    rows_per_call: int = 4096,
    key: str = "",
) -> StageStats:
    """Score the top retrieved passages of every query with one reranker on Ray.

    Args:
        retrieval_path: ``retrieval.parquet`` (``qid, pid, rank, score``).
        corpus_path: The normalized corpus table (``pid, text``).
        queries_path: The normalized queries table (``qid, text``).
        output_path: The system's ``rerank/<system>.parquet`` to write.
        options: The reranker (exactly one, :meth:`RerankOptions.only`) and its limits.
        resources: The actor pool; sized from the cluster when ``None``.
        rows_per_call: Pairs per actor call (length-sorted within the call).
        key: What the scores were computed from, written with the stage's statistics into
            the file's metadata (:func:`scored_with` reads them back).

    Returns:
        Pairs scored, wall time and the resources used.
    """
    import ray
    import ray.data

    resources = resources or plan_resources()
    started = time.perf_counter()
    candidates = candidate_pairs_table(retrieval_path, queries_path, options.top_k)
    expected_pairs = candidates.num_rows
    candidates_ref = ray.put(candidates)
    pairs = (
        read_dataset(corpus_path)
        .map_batches(
            pairs_of_block,
            fn_kwargs={"candidates": [candidates_ref]},
            batch_format="pyarrow",
            batch_size=None,
        )
        # call-sized blocks, so every actor of the pool gets work
        .repartition(target_num_rows_per_block=rows_per_call)
    )
    scored, counters = map_with_actor_pool(
        pairs, RerankActor, {"options": options}, resources, rows_per_call
    )
    scores_dir = temporary_sibling(output_path)
    try:
        write_dataset(scored, scores_dir)
        table = read_table(scores_dir)
    finally:
        discard(scores_dir)
    if table.num_rows != expected_pairs:
        raise RuntimeError(
            f"rerank: scored {table.num_rows} pairs, expected {expected_pairs}"
            " (is a candidate pid missing from the corpus?)"
        )
    ranked = rank_scored_pairs(table)
    counts, used = collect_counters(counters, resources)
    stats = StageStats(
        rows=ranked.num_rows,
        wall_seconds=time.perf_counter() - started,
        resources=used,
        counts=counts,
    )
    record = json.dumps({"key": key, "model": options.model, "stats": stats.to_dict()})
    with atomic_path(output_path) as tmp:
        write_table(ranked.replace_schema_metadata({KEY_METADATA: record.encode()}), tmp)
    return stats


def reranked_rankings(rerank_path: str, retrieved: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per-query rankings after reranking: the reranked top, then the rest of the retrieval.

    Reranking the top ``n`` reorders only those ``n``; deeper retrieved passages keep their
    places after them, so metrics at cutoffs beyond ``n`` stay comparable.

    Args:
        rerank_path: A system's ``rerank/<system>.parquet``.
        retrieved: The retrieval rankings (``read_ranking`` of ``retrieval.parquet``).
    """
    from rerank_ray.ranking import read_ranking

    reranked = read_ranking(rerank_path)
    rankings = {}
    for qid, ranking in retrieved.items():
        head = reranked.get(qid, [])
        seen = set(head)
        rankings[qid] = head + [pid for pid in ranking if pid not in seen]
    return rankings
