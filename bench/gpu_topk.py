"""The exact top-k kernel (``rerank_ray.topk.BlockSearch``) on one device at MS MARCO scale:
random unit vectors (seeded, drawn on the device), N passages x dim, Q queries, k neighbours.

The corpus is fed in the blocks the retrieve stage cuts (``rerank_ray.search.block_rows``),
with its lower bounds guessed from the first ``SAMPLE_ROWS`` vectors, as a retrieval task
does after reading them from Parquet; the time covers the kernel and the host copies of its
input blocks, not Parquet or Ray (a query whose guess fails is counted, not searched again). The first ``--check-queries``
queries are checked against a float64 brute force on the same device (ties by pid).

It needs torch, numpy and pyarrow, nothing else (no Ray, no faiss).

Usage:
    python bench/gpu_topk.py                     # 1M x 1024, 6,980 queries, k = 1000, on CUDA
    python bench/gpu_topk.py --corpus 20000 --dim 64 --queries 50 --k 10 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def unit_vectors(rows: int, dim: int, seed: int, device: str, chunk: int = 1 << 17):
    """``(rows, dim)`` float32 unit vectors on the host, drawn on ``device`` in chunks."""
    import numpy as np
    import torch

    generator = torch.Generator(device=device).manual_seed(seed)
    output = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, chunk):
        end = min(rows, start + chunk)
        block = torch.randn(end - start, dim, device=device, generator=generator)
        block /= block.norm(dim=1, keepdim=True)
        output[start:end] = block.cpu().numpy()
    return output


def reference_ids(queries, corpus, pids, k: int, device: str, chunk: int = 1 << 16) -> list:
    """Top-k ids per query by float64 inner product, ties by pid: the ground truth."""
    import numpy as np
    import torch

    exact = torch.tensor(queries, dtype=torch.float64, device=device)
    scores = torch.empty(len(queries), len(corpus), dtype=torch.float64, device=device)
    for start in range(0, len(corpus), chunk):
        block = torch.from_numpy(corpus[start : start + chunk]).to(device, torch.float64)
        scores[:, start : start + chunk] = exact @ block.T
    scores = scores.cpu().numpy()
    return [pids[np.lexsort((pids, -row))[:k]].tolist() for row in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=6_980)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--check-queries", type=int, default=8)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    import numpy as np
    import torch

    from rerank_ray.search import SAMPLE_ROWS, block_rows
    from rerank_ray.topk import BlockSearch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    corpus = unit_vectors(args.corpus, args.dim, 1, device)
    queries = unit_vectors(args.queries, args.dim, 2, device)
    pids = np.array([f"{i:08d}" for i in range(args.corpus)])
    result = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "corpus": args.corpus,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "generate_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result), flush=True)

    rows = block_rows(args.dim)  # as the retrieve stage cuts the corpus
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    search = BlockSearch(queries, args.k, device=device)
    if args.corpus > args.k:  # the stage's guessed lower bounds, from the first vectors
        search.estimate(corpus[:SAMPLE_ROWS], args.corpus)
    for start in range(0, args.corpus, rows):
        search.add(corpus[start : start + rows], pids[start : start + rows])
    ranked = search.ranked()
    seconds = time.perf_counter() - started
    result.update(
        block_rows=rows,
        search_seconds=round(seconds, 2),
        query_passage_pairs_per_s=round(args.queries * args.corpus / seconds),
        shortlisted_fraction=round(search.shortlisted / (args.queries * args.corpus), 6),
        guess_failed_queries=len(ranked.failed),
    )
    print(json.dumps(result), flush=True)

    checked = min(args.check_queries, args.queries)
    if checked:
        truth = reference_ids(queries[:checked], corpus, pids, args.k, device)
        found = ranked.rows[: checked * args.k]  # rows ascending, k passages each
        ids = ranked.ids.slice(0, len(found)).to_pylist()
        same = sum([ids[j] for j in np.flatnonzero(found == i)] == truth[i] for i in range(checked))
        result["float64_check"] = f"{same}/{checked} queries identical"
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
