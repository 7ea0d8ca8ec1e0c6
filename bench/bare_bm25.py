"""The bare BM25 baseline of the seed protocol: bm25s and pytrec_eval, no rerank-ray.

Corpus = unique positives of the first N rows of a namespace-Pt JSONL, queries = the first Q
rows, bm25s (k1 0.9, b 0.4, Lucene, English stopwords and Snowball stemmer) top 100,
pytrec_eval's recall@1/10/100 and MRR@10. Prints one JSON line; ``rerank-ray run --retriever
bm25`` on the same rows must print the same figures.

Usage:
    python bench/bare_bm25.py ../shared/data/msmarco-dev/dev.jsonl --rows 5000 --queries 100
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()

    import bm25s
    import pytrec_eval
    import Stemmer

    with open(args.dataset, encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(args.rows), handle)]
    passages = list(dict.fromkeys(p.strip() for row in rows for p in row["positive"]))
    index = {text: f"p{i}" for i, text in enumerate(passages)}
    queries = rows[: args.queries]
    qrels = {
        f"q{i}": {index[p.strip()]: 1 for p in row["positive"]} for i, row in enumerate(queries)
    }
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index(bm25s.tokenize(passages, stopwords="en", stemmer=stemmer, show_progress=False))
    tokens = bm25s.tokenize(
        [r["query"] for r in queries], stopwords="en", stemmer=stemmer, show_progress=False
    )
    found, scores = retriever.retrieve(tokens, k=args.k, show_progress=False)
    run = {
        f"q{i}": {f"p{d}": float(s) for d, s in zip(found[i], scores[i])}
        for i in range(len(queries))
    }
    full = pytrec_eval.RelevanceEvaluator(qrels, {"recall.1,10,100", "ndcg_cut.10"}).evaluate(run)
    top10 = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10]) for q, d in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    mean = lambda key, values: round(sum(v[key] for v in values.values()) / len(values), 4)  # noqa: E731
    print(json.dumps({
        "passages": len(passages), "queries": len(queries),
        "recall@1": mean("recall_1", full), "recall@10": mean("recall_10", full),
        "recall@100": mean("recall_100", full), "mrr@10": mean("recip_rank", rr),
        "ndcg@10": mean("ndcg_cut_10", full),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
