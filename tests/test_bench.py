"""The benchmark scripts run at a tiny size and report what they promise (values, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_bench(script: str, *args: str) -> str:
    """Run ``bench/<script>`` with ``args``; fail with its stderr unless it succeeds."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_at_a_tiny_size(tmp_path):
    output = tmp_path / "gpu.json"
    _run_bench(
        "gpu.py", "--size", "tiny", "--device", "cpu", "--texts", "48", "--batch-size", "16",
        "--precisions", "fp32", "--output", str(output),
    )  # fmt: skip
    result = json.loads(output.read_text())
    assert result["size"] == "tiny" and result["device"] == "cpu" and result["texts"] == 48
    (run,) = result["runs"]
    for key in ("embed_actor_tokens_per_s", "embed_bare_tokens_per_s", "rerank_actor_tokens_per_s",
                "rerank_bare_tokens_per_s", "matmul_tflops"):  # fmt: skip
        assert run[key] > 0, key
    assert 0 < run["embed_actor_mfu"] < 1 and 0 < run["rerank_actor_mfu"] < 1


def test_topk_benchmark_finds_the_same_neighbours_as_faiss():
    stdout = _run_bench(
        "topk.py", "--corpus", "6000", "--queries", "40", "--k", "20", "--rows-per-file", "2000",
        "--repeats", "1", "--check-queries", "40",
    )  # fmt: skip
    assert "same neighbours as faiss 1.0000" in stdout
    assert "float64 ground truth (40 queries): pipeline 1.0000" in stdout
    assert "retrieval stage on Ray (3 files)" in stdout


@pytest.mark.slow
def test_embed_memory_benchmark_embeds_every_passage_once():
    stdout = _run_bench("embed_memory.py", "--passages", "3000")
    assert "passages 3000: embed stage" in stdout
    assert "3000 vectors, one per passage" in stdout


@pytest.mark.slow
def test_prepare_memory_benchmark_matches_every_positive_to_its_passage():
    stdout = _run_bench("prepare_memory.py", "--passages", "3000")  # it asserts the qrels
    assert "passages 3000: prepare stage" in stdout
    assert "1000 queries, each positive matched to the passage it was drawn from" in stdout


@pytest.mark.slow
def test_bm25_memory_benchmark_writes_every_querys_top_100():
    stdout = _run_bench("bm25_memory.py", "--passages", "3000")  # it asserts the rows
    assert "3,000 passages: BM25 retrieval" in stdout


def test_bare_bm25_equals_the_pipelines_bm25(ray_session, msmarco, tmp_path):
    """bench/bare_bm25.py (bm25s + pytrec_eval, no rerank-ray) and ``--retriever bm25`` on the
    same rows give the same figures."""
    from rerank_ray.cli import main

    bare = json.loads(
        _run_bench("bare_bm25.py", str(msmarco / "dev.jsonl"), "--rows", "300", "--queries", "40")
    )
    out = tmp_path / "run"
    assert main(["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "300",
                 "--num-queries", "40", "--retriever", "bm25", "--reranker", "none",
                 "--out", str(out), "-q"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["retrieval"]
    for name in ("recall@1", "recall@10", "recall@100", "mrr@10", "ndcg@10"):
        assert round(metrics[name], 4) == bare[name], name
