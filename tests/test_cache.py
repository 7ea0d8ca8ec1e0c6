"""The embedding cache: entries verified before use, copied (never linked) into runs, and an
unwritable cache directory found before any work."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.cache import ENTRY_METADATA, EmbeddingCache
from rerank_ray.cli import main
from rerank_ray.embed import to_fixed_size_list
from rerank_ray.io import copy_tree

ROWS, DIMENSION = 30, 8


def _embeddings(directory, rows=ROWS, files=2, seed=0) -> list:
    """A run's embeddings directory: ``rows`` (pid, embedding) rows over ``files`` files."""
    directory.mkdir(parents=True)
    vectors = np.random.default_rng(seed).standard_normal((rows, DIMENSION)).astype(np.float32)
    paths = []
    for index, part in enumerate(np.array_split(np.arange(rows), files)):
        table = pa.table(
            {
                "pid": pa.array([str(i) for i in part], pa.string()),
                "embedding": to_fixed_size_list(vectors[part]),
            }
        )
        paths.append(directory / f"part-{index:06d}-0000.parquet")
        pq.write_table(table, paths[-1])
    return paths


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rerank_ray" and r.levelno == logging.WARNING
    ]


@pytest.fixture
def stored(tmp_path):
    """A cache with one entry (key ``k``) stored from a run's embeddings directory."""
    source = tmp_path / "run" / "embeddings" / "corpus"
    _embeddings(source)
    cache = EmbeddingCache(str(tmp_path / "cache"))
    path = cache.store("k", str(source))
    return cache, path, source


def test_a_stored_entry_is_found_and_records_its_rows_dimension_and_checksums(stored):
    cache, path, source = stored
    assert path == cache.path("k") and cache.lookup("k", ROWS) == path
    with open(os.path.join(path, ENTRY_METADATA)) as handle:
        metadata = json.load(handle)
    assert metadata["rows"] == ROWS and metadata["dimension"] == DIMENSION
    names = sorted(os.listdir(source))
    assert sorted(metadata["files"]) == names
    assert sorted(os.listdir(path)) == sorted([*names, ENTRY_METADATA])
    for name in names:
        data = (source / name).read_bytes()
        assert metadata["files"][name] == {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert pq.read_table(path).equals(pq.read_table(source))
    assert cache.store("k", str(source)) == path  # already there: kept


def _truncate(path):
    part = os.path.join(path, "part-000000-0000.parquet")
    os.truncate(part, os.path.getsize(part) // 2)


def _remove_rows(path):
    part = os.path.join(path, "part-000001-0000.parquet")
    pq.write_table(pq.read_table(part).slice(0, 5), part)  # 15 rows -> 5


def _add_file(path):
    pq.write_table(pq.read_table(os.path.join(path, "part-000000-0000.parquet")),
                   os.path.join(path, "part-000002-0000.parquet"))  # fmt: skip


def _remove_metadata(path):
    os.remove(os.path.join(path, ENTRY_METADATA))


def _flip_a_byte(path):
    """Same size, other bytes: only the checksum tells."""
    part = os.path.join(path, "part-000000-0000.parquet")
    with open(part, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    ("damage", "rows", "said"),
    [
        (_truncate, ROWS, "bytes"),
        (_remove_rows, ROWS, "bytes"),
        (_add_file, ROWS, "part-000002-0000.parquet"),
        (_remove_metadata, ROWS, "no metadata"),
        (_flip_a_byte, ROWS, "SHA-256"),
        (None, ROWS - 10, f"{ROWS} rows, expected {ROWS - 10}"),  # the caller expects other rows
    ],
)
def test_a_bad_entry_is_removed_with_one_warning(stored, caplog, damage, rows, said):
    cache, path, _ = stored
    if damage:
        damage(path)
    with caplog.at_level(logging.WARNING, logger="rerank_ray"):
        assert cache.lookup("k", rows) is None
    assert not os.path.exists(path)
    (warning,) = _warnings(caplog)
    assert path in warning and said in warning and "\n" not in warning
    assert cache.lookup("k", rows) is None  # gone: a miss, said nothing more
    assert len(_warnings(caplog)) == 1


def test_a_run_gets_its_own_copy_of_the_entry(stored):
    """Truncating a cache file afterwards leaves the run's copy (another inode) as it was;
    neither does the cache share the file it was stored from."""
    _, path, source = stored
    run = os.path.join(os.path.dirname(source), "copied")
    copy_tree(path, run)
    assert sorted(os.listdir(run)) == sorted(os.listdir(source))  # no metadata in the run
    for name in os.listdir(source):
        before = (source / name).read_bytes()
        cached, copied = os.path.join(path, name), os.path.join(run, name)
        inodes = {os.stat(cached).st_ino, os.stat(copied).st_ino, (source / name).stat().st_ino}
        assert len(inodes) == 3
        os.truncate(cached, 10)
        with open(copied, "rb") as handle:
            assert handle.read() == before
        assert (source / name).read_bytes() == before


def test_an_unwritable_cache_directory_is_found_before_any_work(tmp_path, caplog):
    """A directory under a regular file cannot be created, even by root; a writable one is
    probed without leaving a file behind."""
    (tmp_path / "file").write_text("not a directory")
    root = str(tmp_path / "file" / "cache")
    with caplog.at_level(logging.WARNING, logger="rerank_ray"):
        assert EmbeddingCache(root).probe() is not None
        assert EmbeddingCache.usable(root) is None
    (warning,) = _warnings(caplog)
    assert root in warning and "not writable" in warning and "\n" not in warning

    writable = EmbeddingCache.usable(str(tmp_path / "cache"))
    assert writable is not None and os.listdir(writable.root) == []
    assert len(_warnings(caplog)) == 1


def test_a_store_that_cannot_write_is_a_warning(tmp_path, caplog):
    source = tmp_path / "source"
    _embeddings(source)
    (tmp_path / "file").write_text("not a directory")
    cache = EmbeddingCache(str(tmp_path / "file" / "cache"))
    with caplog.at_level(logging.WARNING, logger="rerank_ray"):
        assert cache.store("k", str(source)) is None
    (warning,) = _warnings(caplog)
    assert cache.path("k") in warning and "not stored" in warning


def _cli(msmarco, cache, out) -> list[str]:
    return ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "20",
            "--num-queries", "3", "--embedder", "minilm", "--reranker", "none", "--top-k", "5",
            "--cache-dir", str(cache), "--out", str(out), "-q"]  # fmt: skip


def _read(path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_runs_through_the_cli_recompute_a_bad_entry_and_go_on_without_an_unwritable_cache(
    ray_session, msmarco, tmp_path, caplog
):
    cache = tmp_path / "cache"
    first = tmp_path / "first"
    assert main(_cli(msmarco, cache, first)) == 0
    metrics = _read(first / "metrics.json")
    corpus = _read(first / "manifest.json")["stages"]["embed"]["corpus"]
    entry = corpus["cached_at"]
    run_files = {p: p.read_bytes() for p in (first / "embeddings" / "corpus").iterdir()}

    # The cache entry loses 10 of its 20 rows, rewritten in place: the relevant passages
    # among them, so a reuse of the entry as it is would score recall 0.
    (part,) = [name for name in os.listdir(entry) if name.endswith(".parquet")]
    table = pq.read_table(os.path.join(entry, part))
    kept = table.slice(10)
    relevant = set(pq.read_table(first / "data" / "qrels.parquet").column("pid").to_pylist())
    assert table.num_rows == 20 and not relevant & set(kept.column("pid").to_pylist())
    pq.write_table(kept, os.path.join(entry, part))
    assert {p: p.read_bytes() for p in run_files} == run_files  # the finished run is intact

    second = tmp_path / "second"
    with caplog.at_level(logging.WARNING, logger="rerank_ray"):
        assert main(_cli(msmarco, cache, second)) == 0
    assert _read(second / "metrics.json") == metrics
    embed = _read(second / "manifest.json")["stages"]["embed"]
    assert embed["corpus"]["reused"] is False and embed["queries"]["reused"] is True
    (warning,) = _warnings(caplog)
    assert entry in warning and "bad entry" in warning
    assert EmbeddingCache(str(cache)).lookup(corpus["cache_key"], 20) == entry  # stored again

    caplog.clear()
    (tmp_path / "file").write_text("not a directory")
    unwritable, third = tmp_path / "file" / "cache", tmp_path / "third"
    with caplog.at_level(logging.WARNING, logger="rerank_ray"):
        assert main(_cli(msmarco, unwritable, third)) == 0
    assert _read(third / "metrics.json") == metrics
    (warning,) = _warnings(caplog)
    assert str(unwritable) in warning and "not writable" in warning
    assert "cached_at" not in _read(third / "manifest.json")["stages"]["embed"]["corpus"]
