"""The embedder: loading an embedding model and encoding texts, one batch at a time. Knows
nothing of Ray (the embed stage, :mod:`rerank_ray.embed`, runs it in an actor pool).

Embedders load as FlagEmbedding's ``FlagModel`` loads them (:mod:`rerank_ray.networks`), from
safetensors or a Hub snapshot, never with ``trust_remote_code``, and give its vectors. The
batch functions drive the tokenizer, network and pooling directly on length-sorted,
token-budgeted sub-batches (:func:`length_batches`, which the cross-encoder uses too): calling
``FlagModel.encode`` once per small batch re-probes the batch size and sorts only within the
call, which is much slower than one call on all texts (BENCHMARKS.md, embedding).

Example::

    from rerank_ray.embedder import Embedder, EmbedderOptions
    embedder = Embedder("minilm", EmbedderOptions())
    embedder.encode_corpus(["a passage"]).shape
    # (1, 384)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerank_ray.errors import ConfigError
from rerank_ray.models import default_max_length, default_pooling, pick_device, resolve_model_path
from rerank_ray.networks import load_encoder, pad, pool
from rerank_ray.options import option

#: Padded tokens per forward pass on a GPU: large batches keep it busy.
GPU_TOKENS_PER_BATCH = 16_384
#: Padded tokens per forward pass on a CPU: a batch this small keeps a layer's activations
#: in the cores' caches, which costs less per token than larger batches (BENCHMARKS.md,
#: whole process against the bare script; ``bench/cpu_token_budget.py``).
CPU_TOKENS_PER_BATCH = 2_048


def tokens_per_batch(max_tokens_per_batch: int | None, device: str) -> int:
    """The padded-token budget of one forward pass: the one given, else the device's.

    Example:
        >>> tokens_per_batch(None, "cpu"), tokens_per_batch(None, "cuda:0"), tokens_per_batch(99, "cpu")
        (2048, 16384, 99)
    """
    if max_tokens_per_batch is not None:
        return max_tokens_per_batch
    return GPU_TOKENS_PER_BATCH if device.startswith("cuda") else CPU_TOKENS_PER_BATCH


@dataclass(frozen=True)
class EmbedderOptions:
    """How texts become vectors.

    Args:
        pooling: ``cls`` or ``mean``; ``None`` reads it from the model (see
            :func:`rerank_ray.models.default_pooling`).
        query_max_length: Token limit for queries; ``None`` uses the model's limit.
        passage_max_length: Token limit for passages; ``None`` uses the model's limit.
        query_instruction: Text put before every query (e.g. BGE v1.5's
            ``"Represent this sentence for searching relevant passages: "``).
        normalize: L2-normalize the vectors, so inner product is cosine.
        batch_size: Most texts per forward pass.
        max_tokens_per_batch: Most padded tokens per forward pass; long texts get smaller
            batches. ``None``: the device's (:func:`tokens_per_batch`).
        storage: ``float32`` or ``float16``: how the vectors are stored. float16 halves the
            embedding files and the search's memory; the search scores what is stored, exactly.
    """

    pooling: str | None = option(
        None,
        "--pooling",
        "default: from the model (1_Pooling), else cls",
        choices=("cls", "mean"),
    )
    query_max_length: int | None = option(
        None, "--query-max-length", "query token limit", type=int, metavar="TOKENS"
    )
    passage_max_length: int | None = option(
        None, "--passage-max-length", "passage token limit", type=int, metavar="TOKENS"
    )
    query_instruction: str | None = option(
        None, "--query-instruction", "text put before every query", metavar="TEXT"
    )
    normalize: bool = option(True, "--no-normalize", "keep vectors unnormalized")
    batch_size: int = option(
        64, "--batch-size", "most texts per forward pass", type=int, metavar="N"
    )
    max_tokens_per_batch: int | None = option(
        None,
        "--max-tokens-per-batch",
        f"most padded tokens per forward pass (default: {GPU_TOKENS_PER_BATCH} on a GPU,"
        f" {CPU_TOKENS_PER_BATCH} on a CPU)",
        type=int,
        metavar="N",
    )
    storage: str = option(
        "float32",
        "--embedding-storage",
        "how vectors are stored: float16 halves the files and the search memory",
        choices=("float32", "float16"),
    )

    def __post_init__(self):
        if self.pooling not in (None, "cls", "mean"):
            raise ConfigError(
                f"pooling must be cls or mean, got {self.pooling!r}", EmbedderOptions, "pooling"
            )
        if self.storage not in ("float32", "float16"):
            raise ConfigError(
                f"storage must be float32 or float16, got {self.storage!r}",
                EmbedderOptions,
                "storage",
            )
        for name in (
            "query_max_length",
            "passage_max_length",
            "batch_size",
            "max_tokens_per_batch",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}", EmbedderOptions, name)

    def resolved(self, path: str) -> EmbedderOptions:
        """These options with every ``None`` replaced by the model's own default."""
        max_length = default_max_length(path)
        return EmbedderOptions(
            pooling=self.pooling or default_pooling(path),
            query_max_length=self.query_max_length or max_length,
            passage_max_length=self.passage_max_length or max_length,
            query_instruction=self.query_instruction,
            normalize=self.normalize,
            batch_size=self.batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            storage=self.storage,
        )


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[np.ndarray]:
    """Split indices into batches of similar length, longest first.

    Each batch has at most ``batch_size`` items and at most ``max_tokens`` padded tokens
    (items x longest item), but always at least one item.

    Example:
        >>> [b.tolist() for b in length_batches([5, 100, 7, 90], batch_size=2, max_tokens=1000)]
        [[1, 3], [2, 0]]
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = lengths[order[start]]
        size = max(1, min(batch_size, max_tokens // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


@dataclass
class BatchStats:
    """Counters an actor reports: texts seen, how many were cut at the max length, tokens, and
    the seconds the actor spent in its calls (its busy time: the cost of the work)."""

    rows: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    busy_seconds: float = 0.0


class Embedder:
    """An embedding model loaded once, as FlagEmbedding's ``FlagModel`` loads it.

    Args:
        model: Alias, local directory or Hub name.
        options: See :class:`EmbedderOptions`; ``None`` fields take the model's defaults.
        device: ``cuda``, ``cuda:1``, ``cpu``; ``None`` picks CUDA when torch sees it.

    Example::

        embedder = Embedder("minilm", EmbedderOptions())
        vectors = embedder.encode_queries(["what is a cross-encoder?"])
    """

    def __init__(
        self, model: str, options: EmbedderOptions | None = None, device: str | None = None
    ):
        import torch

        self.path = resolve_model_path(model)
        self.options = (options or EmbedderOptions()).resolved(self.path)
        self.device = pick_device(device)
        on_gpu = self.device.startswith("cuda")
        # fp16 on GPUs as FlagEmbedding does; float32 on CPUs
        dtype = torch.float16 if on_gpu else torch.float32
        self.tokenizer, network = load_encoder(self.path, dtype)
        self.model = network.to(self.device)
        if not on_gpu:
            self.model.float()
        self.model.eval()
        self.dimension = int(self.model.config.hidden_size)
        self.max_tokens = tokens_per_batch(self.options.max_tokens_per_batch, self.device)
        self.stats = BatchStats()
        self._torch = torch

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Embed queries: the instruction (if any) is prepended, then :meth:`encode`."""
        return self.encode(
            role_texts(queries, "queries", self.options), self.options.query_max_length
        )

    def encode_corpus(self, passages: Sequence[str]) -> np.ndarray:
        """Embed passages, truncated at ``passage_max_length`` tokens."""
        return self.encode(passages, self.options.passage_max_length)

    def encode(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """Embed ``texts`` as float32 rows in input order, as ``FlagModel.encode`` would."""
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encoded = self.tokenizer(list(texts), truncation=True, max_length=max_length)
        return self.encode_tokens(encoded["input_ids"], max_length)

    def encode_tokens(self, input_ids: Sequence[Sequence[int]], max_length: int) -> np.ndarray:
        """Embed texts already tokenized (truncated to ``max_length``), in input order.

        Sub-batches are length-sorted and token-budgeted; on a GPU, the next sub-batch is
        padded and copied while the current one runs (the results are read one step late).
        """
        torch = self._torch
        lengths = [len(ids) for ids in input_ids]
        self.stats.rows += len(lengths)
        self.stats.truncated += sum(1 for n in lengths if n >= max_length)
        self.stats.tokens += sum(lengths)
        output = np.empty((len(lengths), self.dimension), dtype=np.float32)
        pending = None
        with torch.inference_mode():
            for batch in length_batches(lengths, self.options.batch_size, self.max_tokens):
                features = [{"input_ids": list(input_ids[i])} for i in batch]
                inputs = pad(self.tokenizer, features).to(self.device, non_blocking=True)
                self.stats.padded_tokens += int(inputs["input_ids"].numel())
                if pending is not None:
                    output[pending[0]] = pending[1].float().cpu().numpy()
                hidden = self.model(**inputs, return_dict=True).last_hidden_state
                vectors = pool(hidden, inputs["attention_mask"], self.options.pooling)
                if self.options.normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
                pending = (batch, vectors)
            if pending is not None:
                output[pending[0]] = pending[1].float().cpu().numpy()
        return output


def role_texts(texts: Sequence[str], role: str, options: EmbedderOptions) -> list[str]:
    """The texts the model sees: queries get the instruction in front (FlagModel's
    ``"{}{}"`` format), passages are as they are."""
    if role == "queries" and options.query_instruction:
        return [f"{options.query_instruction}{text}" for text in texts]
    return list(texts)
