"""What a run prints: its stage lines and result, no library chatter that reads as failure."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: Text that a new user reads as failure; a successful run must print none of it.
ALARMING = ("will hang", "ERROR", "Traceback", "MISSING", "LOAD REPORT", "Loading weights")


@pytest.mark.slow
def test_a_successful_run_prints_its_stages_and_nothing_alarming(msmarco, tmp_path):
    """A small seed run in a fresh process, with a fresh model cache (so the smoke reranker
    is built, which is where transformers reports the head it draws as missing)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["RERANK_RAY_CACHE"] = str(tmp_path / "cache")
    completed = subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", "run",
         "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "40", "--num-queries", "5",
         "--embedder", "minilm", "--reranker", "minilm-smoke", "--rerank-top-k", "5",
         "--top-k", "10", "--out", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    for stage in ("prepare", "embed", "retrieve", "rerank", "evaluate"):
        assert f"rerank-ray: stage {stage}: done in" in completed.stderr, stage
    assert "| retrieval |" in completed.stdout and "| minilm-smoke |" in completed.stdout
    alarming = [line for line in output.splitlines() if any(a in line for a in ALARMING)]
    assert alarming == [], alarming
    # Ray Data's INFO lines went to the session's log file, not to the console.
    assert "Execution plan of Dataset" not in output
