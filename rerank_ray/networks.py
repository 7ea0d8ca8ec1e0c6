"""The networks behind the embedder and the cross-encoder: loaded with transformers as
FlagEmbedding's ``FlagModel`` and ``FlagReranker`` load them, and the inputs built as they
build them (pooling, padding, query–passage pairs). Knows nothing of batching or Ray.

FlagEmbedding itself is not imported: it imports ``datasets`` and its fine-tuning code at
import time, which an inference image need not have. The tests check that the
:class:`~rerank_ray.embedder.Embedder` and :class:`~rerank_ray.cross_encoder.CrossEncoder` built
on these functions equal ``FlagModel.encode`` and ``FlagReranker.compute_score``.

Example::

    from rerank_ray.networks import load_encoder, pad, pool
    tokenizer, model = load_encoder(path, dtype=torch.float32)
    inputs = pad(tokenizer, [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]])
    vectors = pool(model(**inputs).last_hidden_state, inputs["attention_mask"], "cls")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def load_encoder(path: str, dtype):
    """``(tokenizer, AutoModel)`` of an embedding model, weights in ``dtype`` (FlagModel
    loads float16 when asked for fp16, else float32); never with ``trust_remote_code``."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModel.from_pretrained(path, trust_remote_code=False, dtype=dtype)
    return tokenizer, model


def load_classifier(path: str):
    """``(tokenizer, AutoModelForSequenceClassification)`` of a cross-encoder, in the dtype
    transformers picks for the checkpoint (FlagReranker names none); never with
    ``trust_remote_code``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False)
    return tokenizer, model


def pool(hidden, attention_mask, method: str):
    """One vector per text from the last hidden state: the first token's (``cls``) or the
    mean over the attention mask (``mean``), as FlagModel pools."""
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).float()
        return (hidden * mask).sum(dim=1) / attention_mask.sum(dim=1, keepdim=True).float()
    raise ValueError(f"pooling must be cls or mean, got {method!r}")


def pad(tokenizer, features: Sequence[Mapping]):
    """Tokenized texts (one mapping of lists per text) padded into one batch of tensors."""
    columns = {key: [feature[key] for feature in features] for key in features[0]}
    return tokenizer.pad(columns, padding=True, return_tensors="pt")


def pair_inputs(
    tokenizer, query_ids: Sequence[int], passage_ids: Sequence[int], max_length: int
) -> dict:
    """The model input of one ``(query, passage)`` pair, each tokenized without special
    tokens: special tokens added, the passage cut so that the pair fits ``max_length``.

    Where the tokenizer still has the id-level ``prepare_for_model`` (transformers 4), it is
    used; otherwise (transformers 5) the ids are decoded with their special tokens kept and
    the text pair tokenized again, as FlagEmbedding's ``prepare_for_model_compat`` does.
    """
    pair = {"truncation": "only_second", "max_length": max_length, "padding": False}
    prepare = getattr(tokenizer, "prepare_for_model", None)
    if callable(prepare):
        return prepare(list(query_ids), list(passage_ids), **pair)

    def text(ids: Sequence[int]) -> str:
        return tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    return tokenizer(text(query_ids), text(passage_ids), **pair, add_special_tokens=True)
