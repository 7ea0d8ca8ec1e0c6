"""Typed configuration of a run: what the CLI builds and every stage reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from rerank_ray.datasets import DataConfig
from rerank_ray.errors import ConfigError
from rerank_ray.models import EmbedderOptions
from rerank_ray.rerank import RerankOptions

DEFAULT_EMBEDDER = "BAAI/bge-m3"
DEFAULT_TOP_K = 100


@dataclass(frozen=True)
class ComputeConfig:
    """Where and how wide the model stages run.

    Args:
        address: An existing Ray cluster (``ray://…``, ``HOST:PORT`` or ``auto``); ``None``
            starts a private local Ray (or joins the one a Ray job runs in).
        device: ``auto`` (GPUs when the cluster has them or its autoscaler can launch them),
            ``cuda`` (always GPUs) or ``cpu``; see :mod:`rerank_ray.pool`.
        num_actors: A fixed number of model replicas per stage; ``None``: an autoscaling pool.
        max_actors: Most replicas of an autoscaling pool; ``None``: one per GPU the cluster
            has or can launch (one actor on CPUs).
        num_gpus_per_actor: GPUs per replica; ``None``: 1 on GPUs.
        rows_per_call: Rows Ray Data hands each actor call.
    """

    address: str | None = None
    device: str = "auto"
    num_actors: int | None = None
    max_actors: int | None = None
    num_gpus_per_actor: float | None = None
    rows_per_call: int = 4096

    def __post_init__(self):
        from rerank_ray.pool import DEVICE_POLICIES

        if self.device not in DEVICE_POLICIES:
            raise ConfigError(f"--device must be auto, cuda or cpu, got {self.device!r}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ConfigError(f"--num-actors must be at least 1, got {self.num_actors}")
        if self.max_actors is not None and self.max_actors < 1:
            raise ConfigError(f"--max-actors must be at least 1, got {self.max_actors}")
        if self.num_actors is not None and self.max_actors is not None:
            raise ConfigError(
                "--num-actors (a fixed pool) and --max-actors (an autoscaling pool) exclude"
                " each other"
            )
        if self.num_gpus_per_actor is not None and self.num_gpus_per_actor < 0:
            raise ConfigError(
                f"--num-gpus-per-actor must be at least 0, got {self.num_gpus_per_actor}"
            )
        if self.num_gpus_per_actor and self.device == "cpu":
            raise ConfigError("--num-gpus-per-actor asks for GPUs, --device cpu for none")
        if self.rows_per_call < 1:
            raise ConfigError(f"--rows-per-call must be at least 1, got {self.rows_per_call}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; serialized as ``config`` in ``manifest.json``.

    Args:
        out: The run directory.
        data: Data sources.
        embedder: Alias, local directory or Hub name of the embedding model.
        embedding: Embedding options.
        rerank: The cross-encoder (``rerank.model``; ``none`` skips the stage) and its limits.
        top_k: Passages retrieved per query.
        compute: Ray cluster and actor pool sizes.
        corpus_embeddings: Precomputed corpus vectors (Parquet ``pid, embedding``) to use
            instead of embedding the corpus.
        query_embeddings: Precomputed query vectors (Parquet ``qid, embedding``).
        cache_dir: Where reusable embeddings are kept; ``None``: the user's cache directory.
        use_cache: Reuse and store embeddings in the cache.
    """

    out: str
    data: DataConfig = field(default_factory=DataConfig)
    embedder: str = DEFAULT_EMBEDDER
    embedding: EmbedderOptions = field(default_factory=EmbedderOptions)
    rerank: RerankOptions = field(default_factory=RerankOptions)
    top_k: int = DEFAULT_TOP_K
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    corpus_embeddings: str | None = None
    query_embeddings: str | None = None
    cache_dir: str | None = None
    use_cache: bool = True

    def __post_init__(self):
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}")

    @property
    def reranker(self) -> str:
        """The cross-encoder's name, or ``none``."""
        return self.rerank.model

    @property
    def reranks(self) -> bool:
        return self.rerank.model.lower() != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        nested = {
            "data": DataConfig,
            "embedding": EmbedderOptions,
            "rerank": RerankOptions,
            "compute": ComputeConfig,
        }
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key not in known:
                continue
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
