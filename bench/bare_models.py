"""The bare reference loops of the GPU benchmark: transformers alone, as FlagEmbedding's
``FlagModel.encode`` and ``FlagReranker.compute_score`` run a model, without FlagEmbedding
(which imports ``datasets``) or rerank-ray.

Both tokenize every text first, sort by length (longest first), and run fixed-size batches
padded to their longest text. tests/test_gpu_bench.py checks them against FlagModel and
FlagReranker on the offline model.

Example::

    encoder = BareEncoder(path, device="cuda", dtype=torch.float16)
    vectors = encoder.encode(passages, batch_size=256)   # (n, dim), CLS-pooled, normalized
"""

from __future__ import annotations

import numpy as np


def _sorted_batches(lengths: list[int], batch_size: int):
    """Indices longest first, in batches of ``batch_size`` (FlagEmbedding's order)."""
    order = np.argsort([-n for n in lengths], kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class BareEncoder:
    """An embedding model as ``FlagModel`` runs it: ``AutoModel``, CLS (or mean) pooling,
    L2-normalized float32 vectors in input order."""

    def __init__(self, path: str, device: str = "cpu", dtype=None, pooling: str = "cls"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=dtype or torch.float32)
        self.model.to(device).eval()
        self.device = device
        self.pooling = pooling

    def encode(self, texts: list[str], batch_size: int = 256, max_length: int = 512) -> np.ndarray:
        import torch

        ids = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        output = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for batch in _sorted_batches([len(i) for i in ids], batch_size):
                inputs = self.tokenizer.pad(
                    {"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt"
                ).to(self.device)
                hidden = self.model(**inputs).last_hidden_state
                if self.pooling == "cls":
                    vectors = hidden[:, 0]
                else:
                    mask = inputs["attention_mask"].unsqueeze(-1).float()
                    vectors = (hidden * mask).sum(1) / mask.sum(1)
                vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
                output[batch] = vectors.cpu().numpy()
        return output


class BareCrossEncoder:
    """A cross-encoder as ``FlagReranker`` runs it: ``AutoModelForSequenceClassification`` on
    ``[CLS] query [SEP] passage [SEP]`` cut at ``max_length`` (passage side), one raw logit per
    pair, in input order. FlagReranker also cuts a query at 3/4 of ``max_length`` first; the
    benchmark's queries are far shorter."""

    def __init__(self, path: str, device: str = "cpu", dtype=None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=dtype or torch.float32
        )
        self.model.to(device).eval()
        self.device = device

    def score(
        self, pairs: list[tuple[str, str]], batch_size: int = 256, max_length: int = 512
    ) -> np.ndarray:
        import torch

        encoded = self.tokenizer(
            [q for q, _ in pairs],
            [p for _, p in pairs],
            truncation="only_second",
            max_length=max_length,
        )
        columns = list(encoded.keys())
        output = np.empty(len(pairs), dtype=np.float32)
        with torch.inference_mode():
            for batch in _sorted_batches([len(i) for i in encoded["input_ids"]], batch_size):
                inputs = self.tokenizer.pad(
                    {c: [encoded[c][i] for i in batch] for c in columns},
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                output[batch] = self.model(**inputs).logits.view(-1).float().cpu().numpy()
        return output
