"""A run owns its directory: never a folder that is not a run directory, one writer at a
time, and no staging left behind by a dead writer. Real files and real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rerank_ray.config import RunConfig
from rerank_ray.errors import ConfigError
from rerank_ray.pipeline import Pipeline, RunDirectory


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rerank_ray.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr
    errors = [line for line in completed.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, completed.stderr
    return errors[0]


def _snapshot(root) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_a_folder_that_is_not_a_run_directory_is_refused_untouched(msmarco, tmp_path):
    folder = tmp_path / "mine"
    (folder / "embeddings" / "corpus").mkdir(parents=True)
    files = {
        "report.md": b"# my own report\n",
        "metrics.json": b'{"mine": true}\n',
        "embeddings/corpus/x.parquet": b"not parquet at all",
        "notes.txt": b"notes\n",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)

    completed = _cli(
        "run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "20",
        "--num-queries", "3", "--embedder", "/nonexistent", "--reranker", "none",
        "--out", str(folder),
    )  # fmt: skip

    assert _snapshot(folder) == files  # every file, byte for byte, and nothing added
    assert sorted(p.name for p in folder.iterdir()) == [
        "embeddings",
        "metrics.json",
        "notes.txt",
        "report.md",
    ]
    line = _one_error_line(completed)
    assert line.startswith(f"rerank-ray: error: {folder}: not a rerank-ray run directory")
    assert "report.md" in line and "notes.txt" in line and "embeddings/" in line


def test_out_naming_a_file_is_refused(msmarco, tmp_path):
    target = tmp_path / "results.txt"
    target.write_bytes(b"keep me\n")
    completed = _cli(
        "run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "20",
        "--num-queries", "3", "--embedder", "minilm", "--reranker", "none",
        "--out", str(target),
    )  # fmt: skip
    line = _one_error_line(completed)
    assert line == f"rerank-ray: error: {target}: not a directory; a run directory is a folder"
    assert target.read_bytes() == b"keep me\n"


def test_a_foreign_manifest_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"name": "someone else\'s"}\n')
    line = _one_error_line(_cli("evaluate", "--out", str(tmp_path)))
    assert f"{tmp_path / 'manifest.json'}: not a rerank-ray manifest" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


HOLD = """
import sys, time
from rerank_ray.config import RunConfig
from rerank_ray.pipeline import Pipeline
pipeline = Pipeline(RunConfig(out=sys.argv[1]))
pipeline.run.write_manifest(pipeline.manifest)
print("holding", flush=True)
time.sleep(300)
"""


def test_a_second_writer_stops_at_once_until_the_holder_dies(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"

        started = time.monotonic()
        line = _one_error_line(_cli("evaluate", "--out", str(run)))
        assert time.monotonic() - started < 30  # it did not wait for the holder
        assert line.startswith(
            f"rerank-ray: error: {run} is in use by pid {holder.pid}"
            f" on host {socket.gethostname()} since "
        )
        with pytest.raises(ConfigError, match=f"in use by pid {holder.pid}"):
            Pipeline(RunConfig(out=str(run)))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    # The dead holder's lock went with its process: the next run takes it.
    line = _one_error_line(_cli("evaluate", "--out", str(run)))
    assert "run the 'retrieve' stage first" in line
    with Pipeline(RunConfig(out=str(run))):
        record = json.loads((run / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with Pipeline(RunConfig(out=str(run))):  # and released it on close
        pass


def test_leftover_staging_is_removed_when_the_lock_is_taken(tmp_path):
    run = tmp_path / "run"
    (run / "data" / ".corpus.parquet.tmp-0a1b2c3d").mkdir(parents=True)
    (run / "data" / ".corpus.parquet.tmp-0a1b2c3d" / "part-00000.parquet").write_bytes(b"x")
    (run / "embeddings" / ".corpus.tmp-deadbeef").mkdir(parents=True)
    (run / ".retrieval.parquet.tmp-12345678").write_bytes(b"half written")
    (run / ".tmp-xyz.keep").write_bytes(b"not a staging name")
    (run / "notes.txt").write_bytes(b"mine")
    manifest = {"config": RunConfig(out=str(run)).to_dict(), "models": {}, "stages": {}}
    (run / "manifest.json").write_text(json.dumps(manifest))

    line = _one_error_line(_cli("evaluate", "--out", str(run)))
    assert "run the 'retrieve' stage first" in line  # it took the lock, then found no input

    assert not (run / "data" / ".corpus.parquet.tmp-0a1b2c3d").exists()
    assert not (run / "embeddings" / ".corpus.tmp-deadbeef").exists()
    assert not (run / ".retrieval.parquet.tmp-12345678").exists()
    assert (run / ".tmp-xyz.keep").read_bytes() == b"not a staging name"
    assert (run / "notes.txt").read_bytes() == b"mine"


def test_a_claim_that_wrote_nothing_leaves_a_directory_a_run_can_use(tmp_path):
    run = tmp_path / "new" / "run"
    with Pipeline(RunConfig(out=str(run))):
        pass
    assert sorted(p.name for p in run.iterdir()) == [".lock"]
    (run / ".manifest.json.tmp-0f0f0f0f").write_bytes(b"{")  # a first manifest, cut short
    with Pipeline(RunConfig(out=str(run))) as pipeline:
        pipeline.run.write_manifest(pipeline.manifest)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "manifest.json"]
    assert RunDirectory(str(run)).read_manifest()["config"]["out"] == str(run)


def test_object_store_lock_refuses_a_fresh_holder_and_takes_a_stale_one(s3_bucket):
    from rerank_ray.io import read_json, write_json

    root = f"{s3_bucket}/runs/seed"
    run = RunDirectory(root)
    with run.claim() as lock:
        assert read_json(run.lock_path)["token"] == lock.token
        with pytest.raises(ConfigError, match=f"{root} is in use by pid {os.getpid()}"):
            RunDirectory(root).claim()
    RunDirectory(root).claim().release()  # released: free again

    elsewhere = {"host": "elsewhere", "pid": 4321, "since": "then", "token": "theirs"}
    write_json(run.lock_path, {**elsewhere, "heartbeat": time.time()})
    with pytest.raises(ConfigError, match="in use by pid 4321 on host elsewhere since then"):
        run.claim()
    write_json(run.lock_path, {**elsewhere, "heartbeat": time.time() - 3600})
    with run.claim() as lock:
        assert read_json(run.lock_path)["token"] == lock.token
