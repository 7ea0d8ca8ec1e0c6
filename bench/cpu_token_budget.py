"""The embedder's padded-token budget per forward pass on a CPU, in this process.

One :class:`rerank_ray.embedder.Embedder` per budget encodes the same MS MARCO passages; the
budgets take turns (round robin, ``--repeats`` rounds). Prints, per budget, the least wall
and CPU seconds of its rounds: CPU seconds count the work itself, which a shared machine's
other jobs disturb less than the wall. The default budget on a CPU
(:data:`rerank_ray.embedder.CPU_TOKENS_PER_BATCH`) is chosen from this table.

Usage:
    python bench/cpu_token_budget.py --passages 600 --threads 1 --budgets 512,1024,2048,4096,16384
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine, unique_passages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=600)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="most texts per pass")
    parser.add_argument(
        "--budgets",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[512, 1024, 2048, 4096, 16384],
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the budgets")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    import torch

    from rerank_ray.embedder import Embedder, EmbedderOptions

    torch.set_num_threads(args.threads)
    texts = unique_passages(args.passages)
    embedders = {
        budget: Embedder(
            args.model,
            EmbedderOptions(batch_size=args.batch_size, max_tokens_per_batch=budget),
            device="cpu",
        )
        for budget in args.budgets
    }
    embedders[args.budgets[0]].encode_corpus(texts[:64])  # first-call set-up, not counted
    seconds: dict[int, list[tuple[float, float]]] = {budget: [] for budget in args.budgets}
    for _ in range(args.repeats):
        for budget, embedder in embedders.items():
            wall, cpu = time.perf_counter(), time.process_time()
            embedder.encode_corpus(texts)
            seconds[budget].append((time.perf_counter() - wall, time.process_time() - cpu))
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.1f}")
    print(f"{len(texts)} passages, {args.threads} torch threads, batch size {args.batch_size}")
    print("| tokens per batch | wall (least) | cpu (least) |")
    print("|---:|---:|---:|")
    for budget, runs in seconds.items():
        wall = min(w for w, _ in runs)
        cpu = min(c for _, c in runs)
        print(f"| {budget} | {wall:.2f} s | {cpu:.2f} s |")


if __name__ == "__main__":
    main()
