"""Typed configuration of a run: what the CLI builds and every stage reads."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

from rerank_ray.bm25 import RETRIEVERS, BM25Options
from rerank_ray.datasets import DataConfig
from rerank_ray.embedder import EmbedderOptions
from rerank_ray.errors import ConfigError
from rerank_ray.metrics import DEFAULT_METRICS, metric_name, parse_metrics
from rerank_ray.options import option
from rerank_ray.rerank import RerankOptions

DEFAULT_EMBEDDER = "BAAI/bge-m3"
DEFAULT_TOP_K = 100
#: The ``--help`` group of each section's options (top-level options: ``""``).
HELP_GROUPS = {
    "data": "data",
    "embedding": "embedding model",
    "bm25": "retrieval",
    "rerank": "reranker",
    "": "run",
    "compute": "compute",
}


@dataclass(frozen=True)
class ComputeConfig:
    """Where and how wide the model stages run.

    Args:
        address: An existing Ray cluster (``ray://…``, ``HOST:PORT`` or ``auto``); ``None``
            starts a private local Ray (or joins the one a Ray job runs in). Each command
            gives its own: a stage command on an existing run directory does not reuse it.
        device: ``auto`` (GPUs when the cluster has them or its autoscaler can launch them),
            ``cuda`` (always GPUs) or ``cpu``; see :mod:`rerank_ray.pool`.
        num_actors: A fixed number of model replicas per stage; ``None``: an autoscaling pool.
        max_actors: Most replicas of an autoscaling pool; ``None``: one per GPU the cluster
            has or can launch (one actor on CPUs).
        num_gpus_per_actor: GPUs per replica; ``None``: 1 on GPUs.
        rows_per_call: Rows Ray Data hands each actor call.
    """

    address: str | None = option(
        None,
        "--address",
        "existing Ray cluster for this command (not remembered by the run directory); default:"
        " a private local Ray",
    )
    device: str = option(
        "auto",
        "--device",
        "auto: GPUs when the cluster has them or its autoscaler can launch them; cuda: always"
        " GPUs; cpu: never",
        choices=("auto", "cuda", "cpu"),
    )
    num_actors: int | None = option(
        None, "--num-actors", "a fixed number of model replicas instead", type=int, metavar="N"
    )
    max_actors: int | None = option(
        None,
        "--max-actors",
        "most model replicas of the autoscaling pool (default: one per GPU the cluster has or"
        " can launch; one on CPUs)",
        type=int,
        metavar="N",
    )
    num_gpus_per_actor: float | None = option(
        None, "--num-gpus-per-actor", "GPUs per replica (default: 1)", type=float, metavar="G"
    )
    rows_per_call: int = option(
        4096, "--rows-per-call", "rows per actor call", type=int, metavar="N"
    )

    def __post_init__(self):
        from rerank_ray.pool import DEVICE_POLICIES

        def refuse(message: str, *names: str):
            raise ConfigError(message, ComputeConfig, *names)

        if self.device not in DEVICE_POLICIES:
            refuse(f"device must be auto, cuda or cpu, got {self.device!r}", "device")
        for name in ("num_actors", "max_actors", "rows_per_call"):
            value = getattr(self, name)
            if value is not None and value < 1:
                refuse(f"{name} must be at least 1, got {value}", name)
        if self.num_actors is not None and self.max_actors is not None:
            refuse(
                "num_actors (a fixed pool) and max_actors (an autoscaling pool) exclude each other",
                "num_actors",
                "max_actors",
            )
        gpus = self.num_gpus_per_actor
        if gpus is not None and not (gpus >= 0 and math.isfinite(gpus)):  # nan, inf, < 0
            refuse(
                f"num_gpus_per_actor must be a finite number of at least 0, got {gpus}",
                "num_gpus_per_actor",
            )
        if self.num_gpus_per_actor and self.device == "cpu":
            refuse(
                "num_gpus_per_actor asks for GPUs, device cpu for none",
                "num_gpus_per_actor",
                "device",
            )


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; serialized as ``config`` in ``manifest.json``.

    Args:
        out: The run directory.
        data: Data sources.
        embedder: Alias, local directory or Hub name of the embedding model.
        embedding: Embedding options.
        rerank: The rerankers (``rerank.models``; ``none`` skips the stage) and their limits.
        top_k: Passages retrieved per query.
        baseline: The system every other one is tested against: ``retrieval`` or a
            reranker's name (:func:`rerank_ray.systems.system_name`).
        candidates: A ranking made elsewhere (a TREC run, or Parquet ``qid, pid, score``) to
            rerank instead of embedding and retrieving: see :mod:`rerank_ray.candidates`.
        compute: Ray cluster and actor pool sizes.
        corpus_embeddings: Precomputed corpus vectors (Parquet ``pid, embedding``) to use
            instead of embedding the corpus.
        query_embeddings: Precomputed query vectors (Parquet ``qid, embedding``).
        cache_dir: Where reusable embeddings are kept; ``None``: the user's cache directory.
        use_cache: Reuse and store embeddings in the cache.
    """

    out: str = option(
        flag="--out", help="the run directory", metavar="RUN_DIR", path=True, aliases=("--run",)
    )
    data: DataConfig = field(default_factory=DataConfig)
    embedder: str = option(
        DEFAULT_EMBEDDER,
        "--embedder",
        "Hub name, local directory or 'minilm'",
        metavar="MODEL",
        path=True,
        group="embedding model",
    )
    embedding: EmbedderOptions = field(default_factory=EmbedderOptions)
    rerank: RerankOptions = field(default_factory=RerankOptions)
    top_k: int = option(
        DEFAULT_TOP_K, "--top-k", "passages retrieved per query", type=int, metavar="K"
    )
    retriever: str = option(
        "dense",
        "--retriever",
        "dense: exact top-k over the embeddings; bm25: BM25 (bm25s), no embedder; hybrid:"
        " reciprocal-rank fusion of both",
        choices=RETRIEVERS,
        group="retrieval",
    )
    bm25: BM25Options = field(default_factory=BM25Options)
    metrics: tuple[str, ...] | None = option(
        None,
        "--metrics",
        "measures to report, in ir_measures' names or ours (e.g. 'nDCG@10 RR@10 R@100 AP@100"
        " P@10'; default: recall@1,10,100, MRR@1,10, nDCG@10)",
        type=parse_metrics,
        metavar="M,…",
        group="retrieval",
    )
    baseline: str = option(
        "retrieval",
        "--baseline",
        "the system the others are tested against: retrieval or a reranker's name",
        metavar="SYSTEM",
        group="reranker",
    )
    candidates: str | None = option(
        None,
        "--candidates",
        "a ranking to rerank instead of embedding and retrieving: a TREC run (qid Q0 pid rank"
        " score tag) or Parquet (qid, pid, score), cut to --top-k per query",
        metavar="FILE",
        path=True,
    )
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    corpus_embeddings: str | None = option(
        None,
        "--corpus-embeddings",
        "precomputed Parquet (pid, embedding): skip embedding the corpus",
        metavar="PATH",
        path=True,
        group="embedding model",
    )
    query_embeddings: str | None = option(
        None,
        "--query-embeddings",
        "precomputed Parquet (qid, embedding)",
        metavar="PATH",
        path=True,
        group="embedding model",
    )
    cache_dir: str | None = option(
        None,
        "--cache-dir",
        "embedding cache (default: ~/.cache/rerank-ray)",
        metavar="DIR",
        path=True,
        group="embedding model",
    )
    use_cache: bool = option(
        True, "--no-cache", "neither reuse nor store embeddings", group="embedding model"
    )

    def __post_init__(self):
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}", RunConfig, "top_k")
        depths = self.rerank.depths
        if depths and self.rerank.top_k is None and depths[-1] > self.top_k:
            raise ConfigError(
                f"the deepest rerank depth, {depths[-1]}, is deeper than top_k ({self.top_k}"
                " passages retrieved per query)",
                RunConfig,
                "top_k",
            )
        if self.metrics is not None:
            try:
                names = tuple(dict.fromkeys(metric_name(m) for m in self.metrics))
            except ValueError as error:
                raise ConfigError(f"metrics: {error}", RunConfig, "metrics") from None
            if not names:
                raise ConfigError("metrics: give at least one measure", RunConfig, "metrics")
            object.__setattr__(self, "metrics", names)
        systems = ("retrieval", *self.rerank.systems)
        if self.baseline not in systems:
            raise ConfigError(
                f"baseline must be one of the run's systems ({', '.join(systems)}), got"
                f" {self.baseline!r}",
                RunConfig,
                "baseline",
            )
        if self.retriever not in RETRIEVERS:
            raise ConfigError(
                f"retriever must be one of {', '.join(RETRIEVERS)}, got {self.retriever!r}",
                RunConfig,
                "retriever",
            )
        if self.candidates is not None and self.retriever != "dense":
            raise ConfigError(
                f"candidates are the retrieval; retriever {self.retriever} would not run",
                RunConfig,
                "candidates",
                "retriever",
            )
        for supplied in ("corpus_embeddings", "query_embeddings"):
            if self.retriever == "bm25" and getattr(self, supplied) is not None:
                raise ConfigError(
                    f"retriever bm25 uses no embeddings; {supplied} would not be used",
                    RunConfig,
                    "retriever",
                    supplied,
                )
            if self.candidates is not None and getattr(self, supplied) is not None:
                raise ConfigError(
                    f"candidates replace embedding and retrieval; {supplied} would not be used",
                    RunConfig,
                    "candidates",
                    supplied,
                )

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The measures to report: ``metrics`` or :data:`~rerank_ray.metrics.DEFAULT_METRICS`."""
        return self.metrics or DEFAULT_METRICS

    @property
    def embeds(self) -> bool:
        """Whether the run embeds (or imports vectors): not for candidates or BM25 alone."""
        return self.candidates is None and self.retriever != "bm25"

    @property
    def reranks(self) -> bool:
        """Whether the run reranks (its rerankers are not ``none``)."""
        return self.rerank.reranks

    @property
    def systems(self) -> tuple[str, ...]:
        """The run's ranked systems: ``retrieval``, then each reranker's."""
        return ("retrieval", *self.rerank.systems)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        nested = {f.name: f.default_factory for f in fields(cls) if is_dataclass(f.default_factory)}
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                continue
            if key == "rerank" and "model" in value:  # one reranker, as manifests once held it
                value = {
                    "models": [value["model"]],
                    **{k: v for k, v in value.items() if k != "model"},
                }
            values[key] = nested[key](**value) if key in nested else value
        return cls(**values)

    def updated(self, overrides: dict) -> RunConfig:
        """A copy with dotted-path overrides applied, e.g. ``{"compute.num_actors": 2}``."""
        top: dict = {}
        nested: dict[str, dict] = {}
        for path, value in overrides.items():
            section, _, name = path.rpartition(".")
            if section:
                nested.setdefault(section, {})[name] = value
            else:
                top[name] = value
        for section, values in nested.items():
            top[section] = replace(getattr(self, section), **values)
        return replace(self, **top)
