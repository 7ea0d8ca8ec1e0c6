"""Shared helpers of the benchmarks (and the tests' S3 endpoint): real MS MARCO text from
../shared, timing, machine facts."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_JSONL = REPO.parent / "shared" / "data" / "msmarco-dev" / "dev.jsonl"

#: Common English words for synthetic texts (benchmarks that need no real data).
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "as",
    "with",
    "by",
    "at",
    "from",
    "that",
    "this",
    "are",
    "which",
    "be",
    "an",
    "or",
    "has",
    "its",
]


def msmarco_rows(limit: int) -> list[dict]:
    """The first ``limit`` rows of ../shared's MS MARCO dev set (research-only; never copied)."""
    if not DEV_JSONL.exists():
        raise SystemExit(f"{DEV_JSONL}: missing; the benchmarks read the shared MS MARCO data")
    rows = []
    with open(DEV_JSONL, encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == limit:
                break
    return rows


def unique_passages(count: int) -> list[str]:
    """The first ``count`` unique positives, in dataset order."""
    seen: dict[str, None] = {}
    with open(DEV_JSONL, encoding="utf-8") as handle:
        for line in handle:
            for text in json.loads(line)["positive"]:
                seen.setdefault(text)
            if len(seen) >= count:
                break
    return list(seen)[:count]


@contextmanager
def timer(results: dict, key: str):
    started = time.perf_counter()
    yield
    results[key] = time.perf_counter() - started


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {date.today()}"


class PeakRss:
    """Samples every 20 ms the resident memory of this process and of Ray's worker processes
    (``ray::`` titles).

    Two figures each: RSS, and private memory (RSS less shared pages). RSS also counts the
    pages of Ray's shared-memory object store that a process has touched, which grows with
    the length of a run though nothing is held; private memory is what the process itself
    holds. Sampled, not ``ru_maxrss``: Linux carries a parent's high-water mark into a child
    across fork and exec, so a child started by a big parent would report the parent's peak.
    """

    def __init__(self):
        self.peak_worker_bytes = 0
        self.peak_driver_bytes = 0
        self.peak_worker_private_bytes = 0
        self.peak_driver_private_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            mine = me.memory_info()
            self.peak_driver_bytes = max(self.peak_driver_bytes, mine.rss)
            self.peak_driver_private_bytes = max(
                self.peak_driver_private_bytes, mine.rss - mine.shared
            )
            for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
                title = " ".join(process.info["cmdline"] or [])
                memory = process.info["memory_info"]
                if title.startswith("ray::") and memory:
                    self.peak_worker_bytes = max(self.peak_worker_bytes, memory.rss)
                    self.peak_worker_private_bytes = max(
                        self.peak_worker_private_bytes, memory.rss - memory.shared
                    )
            time.sleep(0.02)

    def to_dict(self) -> dict[str, int]:
        return {
            "driver_peak": self.peak_driver_bytes,
            "driver_private_peak": self.peak_driver_private_bytes,
            "worker_peak": self.peak_worker_bytes,
            "worker_private_peak": self.peak_worker_private_bytes,
        }

    @staticmethod
    def describe(peaks: dict[str, int]) -> str:
        """One line of MiB figures, from :meth:`to_dict`'s keys."""
        mib = 1 << 20
        return (
            f"driver peak RSS {peaks['driver_peak'] / mib:.0f} MiB"
            f" (private {peaks['driver_private_peak'] / mib:.0f}), worker peak RSS"
            f" {peaks['worker_peak'] / mib:.0f} MiB"
            f" (private {peaks['worker_private_peak'] / mib:.0f})"
        )

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def start_local_s3():
    """moto's S3 server in a thread of this process, for ``s3://`` runs without a network.

    Its address and test credentials go into the environment that pyarrow's S3 filesystem
    reads; start it before Ray, so that Ray's workers inherit them as a cluster's would.
    Returns ``(endpoint URL, server)``; ``server.stop()`` ends it.
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
    return endpoint, server
