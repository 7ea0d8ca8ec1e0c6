"""The cross-encoder: loading a reranker and scoring ``(query, passage)`` pairs, one batch at a
time, and ``minilm-smoke``, the smoke-test reranker built offline. Knows nothing of Ray (the
rerank stage, :mod:`rerank_ray.rerank`, runs it in an actor pool; :mod:`rerank_ray.reranker`
is the application-facing API).

Rerankers load as FlagEmbedding's ``FlagReranker`` loads them (:mod:`rerank_ray.networks`), from
safetensors or a Hub snapshot, never with ``trust_remote_code``, and give its scores. Scoring
drives the tokenizer and network on length-sorted, token-budgeted sub-batches, as the embedder
does (:func:`rerank_ray.embedder.length_batches`).

Example::

    from rerank_ray.cross_encoder import CrossEncoder
    encoder = CrossEncoder("minilm-smoke", device="cpu")
    encoder.score([("what is a cross-encoder?", "a model that reads both texts")]).shape
    # (1,)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from rerank_ray.embedder import BatchStats, length_batches
from rerank_ray.errors import ConfigError
from rerank_ray.models import default_cache_dir, minilm_path, pick_device, resolve_model_path
from rerank_ray.networks import load_classifier, pad, pair_inputs

#: Seed of the random classification head of ``minilm-smoke``.
SMOKE_SEED = 20240917
SMOKE_WARNING = (
    "minilm-smoke is a smoke-test cross-encoder (MiniLM encoder + seeded random head):"
    " its scores mean nothing"
)


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

    encoder = minilm_path()
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
    """A cross-encoder loaded once, as FlagEmbedding's ``FlagReranker`` loads it.

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

        if max_length < 2 or batch_size < 1:
            raise ConfigError("reranker max_length must be >= 2 and batch_size >= 1")
        self.path = resolve_model_path(model, RERANKER_ALIASES)
        self.device = pick_device(device)
        on_gpu = self.device.startswith("cuda")
        self.tokenizer, self.model = load_classifier(self.path)
        if on_gpu:
            self.model.half()
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_tokens_per_batch = max_tokens_per_batch
        self.stats = BatchStats()
        self._torch = torch

    def _features(self, pairs: Sequence[tuple[str, str]]) -> list[dict]:
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
            pair_inputs(self.tokenizer, q, p, self.max_length) for q, p in zip(queries, passages)
        ]

    def score(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Raw scores (logits) of ``(query, passage)`` pairs, as float32, in input order."""
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
                inputs = pad(self.tokenizer, [features[i] for i in batch]).to(self.device)
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
