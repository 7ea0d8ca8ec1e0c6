"""The tuned bare script: ``bench/bare_retrieval.py`` over a sweep of FlagModel batch sizes.

A user who tunes ``encode_corpus``'s batch size gets a faster bare script than FlagEmbedding's
default; the best batch of this sweep is the yardstick the whole pipeline is timed against
(BENCHMARKS.md, "Whole process against the bare script"). Each batch size runs as a whole
process, timed from outside; the sizes take turns (round robin, ``--repeats`` rounds) so that
a drift of the machine's speed touches them alike. Prints one row per batch size: median
wall, median ``encode_corpus`` seconds (in-process), the 1-minute load average around its
runs, and the recalls, which must not depend on the batch (checked).

Usage:
    python bench/bare_batch_sweep.py [--dataset dev-2000.jsonl | --passages 2000] \
        --queries 20 --batch-sizes 16,32,64,128,256 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine  # noqa: E402

BENCH = os.path.dirname(os.path.abspath(__file__))
RECALLS = ("recall@1", "recall@10", "recall@100")


def bare_run(dataset: str, model: str, queries: int, k: int, batch: int) -> tuple[float, dict]:
    """One whole process of ``bare_retrieval.py`` at ``batch``: (wall seconds, its JSON line)."""
    command = [sys.executable, os.path.join(BENCH, "bare_retrieval.py"), dataset, model,
               "--queries", str(queries), "--k", str(k), "--batch-size", str(batch)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def sweep(dataset: str, model: str, args) -> list[dict]:
    """Every batch size ``args.repeats`` times, round robin; one summary row per size."""
    runs: dict[int, list] = {batch: [] for batch in args.batch_sizes}
    for _ in range(args.repeats):
        for batch in args.batch_sizes:
            load = os.getloadavg()[0]
            wall, out = bare_run(dataset, model, args.queries, args.k, batch)
            runs[batch].append((wall, out, load))
    rows = []
    for batch, done in runs.items():
        recalls = {name: done[0][1][name] for name in RECALLS}
        if any(out[name] != recalls[name] for _, out, _ in done for name in RECALLS):
            raise SystemExit(f"batch {batch}: recalls differ between runs")
        rows.append(
            {
                "batch": batch,
                "wall": statistics.median(w for w, _, _ in done),
                "encode_corpus": statistics.median(o["times"]["encode_corpus"] for _, o, _ in done),
                "load": (min(load for *_, load in done), max(load for *_, load in done)),
                **recalls,
            }
        )
    first = {name: rows[0][name] for name in RECALLS}
    if any(abs(row[name] - first[name]) > 1e-9 for row in rows for name in RECALLS):
        raise SystemExit("the recalls depend on the batch size")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", help="namespace-Pt JSONL (default: made from --passages)")
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--model", default="minilm", help="alias or folder (default: minilm)")
    parser.add_argument(
        "--batch-sizes",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[16, 32, 64, 128, 256],
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the sizes")
    args = parser.parse_args()

    from rerank_ray.models import resolve_model_path

    model = resolve_model_path(args.model)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset
        if dataset is None:
            from embed_throughput import dataset_with_passages

            dataset = os.path.join(tmp, f"dev-{args.passages}.jsonl")
            dataset_with_passages(args.passages, dataset)
        rows = sweep(dataset, model, args)
    best = min(rows, key=lambda row: row["wall"])
    print(f"bare_retrieval.py, {args.queries} queries, top {args.k}; medians of {args.repeats}")
    print("| batch | wall | encode_corpus | load (1 min) | recall@1 / 10 / 100 |")
    print("|---:|---:|---:|---:|---|")
    for row in rows:
        mark = "**" if row is best else ""
        recalls = " / ".join(f"{row[name]:.2f}" for name in RECALLS)
        print(
            f"| {row['batch']} | {mark}{row['wall']:.2f} s{mark} | {row['encode_corpus']:.2f} s"
            f" | {row['load'][0]:.1f}–{row['load'][1]:.1f} | {recalls} |"
        )
    print(f"best batch: {best['batch']}")


if __name__ == "__main__":
    main()
