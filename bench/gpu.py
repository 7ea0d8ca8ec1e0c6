"""GPU throughput of the model stages, without downloads: bge-m3's and bge-reranker-large's
architectures with random weights.

For each precision (fp16, bf16) the script measures, on MS MARCO-length synthetic passages
(about 80 tokens on average):

* the card's dense matrix-product rate (one large ``torch.matmul``), the reference for MFU;
* embedding tokens/s through the pipeline's actor (``rerank_ray.embed.EmbedActor``, the code
  Ray Data calls) and through a bare transformers loop as ``FlagModel.encode_corpus`` runs
  one (``bench/bare_models.py``);
* reranking tokens/s through ``rerank_ray.rerank.RerankActor`` and a bare transformers loop
  as ``FlagReranker.compute_score`` runs one;
* model FLOPs utilisation: 2 x non-embedding parameters x tokens / time / matmul rate.

It needs torch, transformers, numpy and pyarrow, nothing else: not Ray (the actor classes are
called directly, as Ray would), not FlagEmbedding or ``datasets``, no download (the tokenizer
is a WordPiece vocabulary of the synthetic words, built here). ``--size tiny`` builds 2-layer
models so the script runs on a CPU in seconds (the tests do). ``--output`` is rewritten after
each precision, so a run stopped by a time limit keeps what it measured.

Usage:
    python bench/gpu.py                      # full size, on CUDA (bench/device_run.sh)
    python bench/gpu.py --size tiny --device cpu --texts 64 --precisions fp32
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import WORDS  # noqa: E402

SIZES = {
    # XLM-RoBERTa-large: bge-m3 (8194 positions) and bge-reranker-large (514 positions).
    "full": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
    },
}
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def synthetic_passages(count: int, seed: int = 0) -> list[str]:
    """Texts of MS MARCO-like length: 40-120 words, mean about 80 tokens with a BERT vocabulary."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) for _ in range(count)]


def build_tokenizer():
    """A lower-casing WordPiece tokenizer whose vocabulary is BERT's special tokens, the
    synthetic words (one token each: a passage of n words is n + 2 tokens) and single letters
    (so a word cut in a query still tokenizes)."""
    from transformers import BertTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters]
    words += [f"##{c}" for c in letters]
    vocabulary = {word: index for index, word in enumerate(dict.fromkeys(words))}
    return BertTokenizer(vocab=vocabulary)


def build_models(size: str, directory: str) -> tuple[str, str]:
    """Random-weight embedder and cross-encoder directories (config + safetensors + tokenizer)."""
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, XLMRobertaConfig

    # The tokenizer's ids fit XLM-R's 250,002-token vocabulary (two token types, as BERT's
    # tokenizer marks the passage of a pair).
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    paths = []
    for name, positions, head in (("embedder", 8194, False), ("reranker", 514, True)):
        config = XLMRobertaConfig(
            vocab_size=250_002, max_position_embeddings=positions, type_vocab_size=2,
            num_labels=1, pad_token_id=tokenizer.pad_token_id, **SIZES[size],
        )  # fmt: skip
        model = (AutoModelForSequenceClassification if head else AutoModel).from_config(config)
        path = os.path.join(directory, name)
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def matmul_tflops(device: str, dtype, n: int) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    repeats, started = 5, time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started) / 1e12


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def non_embedding_parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def timed(function, device: str) -> float:
    _sync(device)
    started = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - started


def time_actor(result, stage, actor, model, batch, batch_size, device, dtype, peak) -> int:
    """Time ``actor`` (the code Ray calls) on ``batch`` after a warm-up; record tokens/s and MFU.

    ``model`` is the actor's :class:`Embedder` or :class:`CrossEncoder` (its network and
    counters). Returns the tokens processed, which the bare loop is measured against.
    """
    model.model.to(device=device, dtype=dtype)
    model.device = device
    actor(batch.slice(0, min(batch.num_rows, batch_size)))  # warm-up
    tokens_before = model.stats.tokens
    seconds = timed(lambda: actor(batch), device)
    tokens = model.stats.tokens - tokens_before
    parameters = non_embedding_parameters(model.model)
    result[f"{stage}_actor_tokens_per_s"] = round(tokens / seconds)
    result[f"{stage}_actor_mfu"] = round(2 * parameters * tokens / seconds / (peak * 1e12), 4)
    return tokens


def time_bare(result, stage, network, tokens, device, dtype, run, rows, batch_size) -> None:
    """Time the bare transformers loop ``run(rows)`` on the same tokens; record the ratio."""
    network.to(device=device, dtype=dtype)
    run(rows[:batch_size])  # warm-up
    seconds = timed(lambda: run(rows), device)
    result[f"{stage}_bare_tokens_per_s"] = round(tokens / seconds)
    result[f"{stage}_ratio_actor_over_bare"] = round(
        result[f"{stage}_actor_tokens_per_s"] / result[f"{stage}_bare_tokens_per_s"], 3
    )


def measure(embedder_path, reranker_path, texts, precision, device, batch_size) -> dict:
    import pyarrow as pa
    import torch
    from bare_models import BareCrossEncoder, BareEncoder

    from rerank_ray.embed import EmbedActor
    from rerank_ray.embedder import EmbedderOptions
    from rerank_ray.rerank import RerankActor, RerankOptions

    dtype = getattr(torch, DTYPES[precision])
    result: dict = {"precision": precision}
    peak = matmul_tflops(device, dtype, 8192 if device.startswith("cuda") else 1024)
    result["matmul_tflops"] = round(peak, 2)

    options = EmbedderOptions(batch_size=batch_size, max_tokens_per_batch=batch_size * 128)
    embed_actor = EmbedActor(embedder_path, options, "corpus", threads=os.cpu_count() or 1)
    batch = pa.table({"pid": [str(i) for i in range(len(texts))], "text": texts})
    tokens = time_actor(
        result, "embed", embed_actor, embed_actor.embedder, batch, batch_size, device, dtype, peak
    )
    bare = BareEncoder(embedder_path, device=device, dtype=dtype)
    time_bare(
        result,
        "embed",
        bare.model,
        tokens,
        device,
        dtype,
        lambda rows: bare.encode(rows, batch_size=batch_size),
        texts,
        batch_size,
    )

    pairs = [(texts[i][:60], texts[(i * 7 + 1) % len(texts)]) for i in range(len(texts))]
    rerank_options = RerankOptions(
        models=reranker_path, batch_size=batch_size, max_tokens_per_batch=batch_size * 192
    )
    rerank_actor = RerankActor(rerank_options, threads=os.cpu_count() or 1)
    pair_batch = pa.table({
        "qid": [str(i) for i in range(len(pairs))], "pid": [str(i) for i in range(len(pairs))],
        "retrieval_rank": list(range(1, len(pairs) + 1)),
        "query": [q for q, _ in pairs], "text": [p for _, p in pairs],
    })  # fmt: skip
    tokens = time_actor(
        result,
        "rerank",
        rerank_actor,
        rerank_actor.scorer,
        pair_batch,
        batch_size,
        device,
        dtype,
        peak,
    )
    bare_reranker = BareCrossEncoder(reranker_path, device=device, dtype=dtype)
    time_bare(
        result,
        "rerank",
        bare_reranker.model,
        tokens,
        device,
        dtype,
        lambda rows: bare_reranker.score(rows, batch_size=batch_size),
        pairs,
        batch_size,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precisions", default="fp16,bf16")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = synthetic_passages(args.texts)
    results = {
        "size": args.size,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "texts": len(texts),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        embedder_path, reranker_path = build_models(args.size, directory)
        results["build_seconds"] = round(time.perf_counter() - started, 1)
        for precision in args.precisions.split(","):
            started = time.perf_counter()
            run = measure(embedder_path, reranker_path, texts, precision, device, args.batch_size)
            run["seconds"] = round(time.perf_counter() - started, 1)
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
            if args.output:  # after each precision: a run cut short keeps what it measured
                with open(args.output, "w") as handle:
                    json.dump(results, handle, indent=2)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
