"""Shared helpers of the benchmarks: real MS MARCO text from ../shared, timing, machine facts."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_JSONL = REPO.parent / "shared" / "data" / "msmarco-dev" / "dev.jsonl"


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
