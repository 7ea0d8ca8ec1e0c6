"""The bare baseline, as one whole process: FlagModel.encode, a numpy top-k, recall.

What a user writes without rerank-ray: read the namespace-Pt rows, corpus = their positives,
queries = the first Q rows; one ``encode_corpus`` call, one ``encode_queries`` call; inner
products, top-k by ``np.argsort``; recall@k. Prints one JSON line with the phase times
(``python`` start-up excluded, which the caller times from outside).

Usage:
    python bench/bare_retrieval.py DEV_JSONL MODEL_DIR --queries 20 --k 100 [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import time

started = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="namespace-Pt JSONL (query, positive)")
    parser.add_argument("model", help="model directory (mean pooling, as all-MiniLM-L6-v2)")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="FlagModel.encode's batch (default: its own)"
    )
    args = parser.parse_args()
    times = {}

    import numpy as np
    from FlagEmbedding import FlagModel

    times["import"] = time.perf_counter() - started
    with open(args.dataset, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    passages = list(dict.fromkeys(text for row in rows for text in row["positive"]))
    queries = rows[: args.queries]

    mark = time.perf_counter()
    model = FlagModel(
        args.model,
        pooling_method="mean",
        use_fp16=False,
        devices=["cpu"],
        query_max_length=args.max_length,
        passage_max_length=args.max_length,
    )
    times["load"] = time.perf_counter() - mark
    mark = time.perf_counter()
    batch = {"batch_size": args.batch_size} if args.batch_size else {}
    corpus = model.encode_corpus(passages, **batch)
    times["encode_corpus"] = time.perf_counter() - mark
    mark = time.perf_counter()
    query_vectors = model.encode_queries([row["query"] for row in queries], **batch)
    times["encode_queries"] = time.perf_counter() - mark

    mark = time.perf_counter()
    scores = query_vectors @ corpus.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, : args.k]
    index = {text: i for i, text in enumerate(passages)}
    recall = {}
    for cut in (1, 10, 100):
        hits = [
            len({index[p] for p in row["positive"]} & set(top[q, :cut].tolist()))
            / len(row["positive"])
            for q, row in enumerate(queries)
        ]
        recall[f"recall@{cut}"] = float(np.mean(hits))
    times["topk_and_metrics"] = time.perf_counter() - mark
    times["total_in_process"] = time.perf_counter() - started
    print(
        json.dumps({"passages": len(passages), "queries": len(queries), "times": times, **recall})
    )


if __name__ == "__main__":
    main()
