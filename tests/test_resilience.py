"""Reuse and resilience: the embedding cache, supplied embeddings, resume, worker failures, odd input."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.cli import main
from rerank_ray.config import ComputeConfig, RunConfig
from rerank_ray.datasets import DataConfig
from rerank_ray.embed import embed_table, embedding_matrix
from rerank_ray.embedder import EmbedderOptions
from rerank_ray.errors import DataError
from rerank_ray.pipeline import run_pipeline
from rerank_ray.rerank import RerankOptions
from rerank_ray.supplied import import_embeddings


def _config(msmarco, out, cache, **changes) -> RunConfig:
    base = dict(
        out=str(out),
        data=DataConfig(dataset=str(msmarco / "dev.jsonl"), corpus_rows=100, num_queries=12),
        embedder="minilm",
        top_k=20,
        rerank=RerankOptions(models="none"),
        compute=ComputeConfig(rows_per_call=64),
        cache_dir=str(cache),
    )
    base.update(changes)
    return RunConfig(**base)


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _vectors(directory, id_column):
    table = pq.read_table(directory)
    order = np.argsort(np.asarray(table[id_column].to_pylist()))
    ids = np.asarray(table[id_column].to_pylist())[order]
    return ids, embedding_matrix(table["embedding"])[order]


@pytest.fixture(scope="module")
def first_run(ray_session, msmarco, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("first")
    metrics = run_pipeline(_config(msmarco, out, cache))
    return out, cache, metrics


#: The reranker of the runs below that rerank: every retrieved candidate (20 per query).
RERANK = RerankOptions(models="minilm-smoke", max_length=64)
SMOKE_FILE = "rerank/minilm-smoke.parquet"


@pytest.fixture(scope="module")
def reranked_run(first_run, msmarco, tmp_path_factory):
    """The first run's options with a reranker, in a new directory with the same cache: the
    embedding model must not load (the test below checks what was reused)."""
    _, cache, _ = first_run

    def no_model(*args, **kwargs):
        raise AssertionError("the embedding model was loaded")

    out = tmp_path_factory.mktemp("reranked")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rerank_ray.embed.embed_tables", no_model)
        patch.setattr("rerank_ray.embedder.Embedder.__init__", no_model)
        metrics = run_pipeline(_config(msmarco, out, cache, rerank=RERANK))
    return out, metrics


@pytest.mark.slow
def test_a_second_run_reuses_embeddings_without_loading_the_model(first_run, reranked_run):
    out, cache, metrics = first_run
    second, again = reranked_run
    assert _manifest(out)["stages"]["embed"]["reused"] is False
    embed = _manifest(second)["stages"]["embed"]
    assert embed["reused"] is True
    assert embed["corpus"]["source"] == str(cache / "embeddings" / embed["corpus"]["cache_key"])
    assert again["retrieval"] == metrics["retrieval"] and "minilm-smoke" in again
    for role, column in (("corpus", "pid"), ("queries", "qid")):
        ids_a, a = _vectors(out / "embeddings" / role, column)
        ids_b, b = _vectors(second / "embeddings" / role, column)
        assert ids_a.tolist() == ids_b.tolist() and np.array_equal(a, b)


@pytest.mark.slow
def test_changing_the_key_recomputes(first_run, msmarco, tmp_path):
    _, cache, _ = first_run
    shorter = tmp_path / "shorter"
    run_pipeline(_config(msmarco, shorter, cache, embedding=EmbedderOptions(passage_max_length=32)))
    embed = _manifest(shorter)["stages"]["embed"]
    assert embed["corpus"]["reused"] is False  # another max length: other vectors
    assert embed["queries"]["reused"] is True  # queries' options did not change


def _write_vectors(path, id_column, ids, vectors, as_list=True):
    column = (
        pa.array(vectors.tolist(), pa.list_(pa.float32()))
        if as_list
        else pa.array(vectors.tolist())
    )
    pq.write_table(pa.table({id_column: ids, "embedding": column}), path)


@pytest.mark.slow
def test_supplied_embeddings_give_the_same_run(first_run, msmarco, tmp_path):
    out, cache, metrics = first_run
    pids, corpus = _vectors(out / "embeddings" / "corpus", "pid")
    qids, queries = _vectors(out / "embeddings" / "queries", "qid")
    _write_vectors(
        tmp_path / "corpus.parquet", "pid", pids.tolist()[::-1], corpus[::-1]
    )  # any order
    _write_vectors(tmp_path / "queries.parquet", "qid", qids.tolist(), queries)
    run = tmp_path / "byo"
    config = _config(
        msmarco, run, cache, use_cache=False,
        corpus_embeddings=str(tmp_path / "corpus.parquet"),
        query_embeddings=str(tmp_path / "queries.parquet"),
    )  # fmt: skip
    assert run_pipeline(config)["retrieval"] == metrics["retrieval"]
    assert _manifest(run)["stages"]["embed"]["corpus"]["source"] == str(tmp_path / "corpus.parquet")
    assert _manifest(run)["stages"]["embed"]["corpus"]["cache_key"] is None  # not the embedder's


@pytest.mark.parametrize(
    "damage,message",
    [
        ("nan", "row 3: embedding of .* has NaN or infinite values"),
        ("float16", "row 3: embedding of p2 has values beyond float16's range"),
        ("null", "row 3: embedding is empty"),
        ("dims", "embeddings have 5 dimensions, earlier ones 384"),
        ("unknown", "pid nope is not in"),
        ("duplicate", "appears twice"),
        ("missing", "1 pids of .* have no embedding"),
        ("column", "missing column 'embedding'"),
    ],
)
def test_bad_supplied_embeddings_are_rejected(ray_session, tmp_path, damage, message):
    """Each bad supplied file, imported against a corpus table as the embed stage does it:
    one error naming the file (and row), and nothing published."""
    pids = [f"p{i}" for i in range(40)]
    table = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"pid": pids, "text": ["t"] * len(pids)}), table)
    corpus = np.random.default_rng(0).standard_normal((len(pids), 384)).astype(np.float32)
    path = tmp_path / "supplied.parquet"
    storage = "float32"
    if damage == "nan":
        corpus[2, 7] = np.nan
        _write_vectors(path, "pid", pids, corpus)
    elif damage == "float16":  # finite in float32, infinite once stored as float16
        corpus[2, 7], storage = 1e6, "float16"
        _write_vectors(path, "pid", pids, corpus)
    elif damage == "null":
        rows = [list(map(float, row)) for row in corpus]
        rows[2] = None
        pq.write_table(
            pa.table({"pid": pids, "embedding": pa.array(rows, pa.list_(pa.float32()))}), path
        )
    elif damage == "dims":
        path = tmp_path / "supplied"
        path.mkdir()
        _write_vectors(path / "a.parquet", "pid", pids[:1], corpus[:1])
        _write_vectors(path / "b.parquet", "pid", pids[1:], corpus[1:, :5])
    elif damage == "unknown":
        _write_vectors(path, "pid", pids[:-1] + ["nope"], corpus)
    elif damage == "duplicate":
        _write_vectors(path, "pid", pids[:-1] + [pids[0]], corpus)
    elif damage == "missing":
        _write_vectors(path, "pid", pids[:-1], corpus[:-1])
    else:
        pq.write_table(pa.table({"pid": pids, "vector": corpus.tolist()}), path)
    target = tmp_path / "run" / "embeddings" / "corpus"
    target.parent.mkdir(parents=True)
    with pytest.raises(DataError, match=message):
        import_embeddings(str(path), str(table), "pid", str(target), storage)
    assert not target.exists() and os.listdir(target.parent) == []


def test_check_ids_equals_a_brute_force_count_across_files_and_partitions(
    ray_session, tmp_path, monkeypatch
):
    from rerank_ray import parquet
    from rerank_ray.supplied import check_ids

    # One read task per file: 7 blocks, so the sort has 7 partitions and ids cross them.
    monkeypatch.setattr(parquet, "READ_TASK_BYTES", 1)
    table = [f"p{i}" for i in range(3000)]
    pq.write_table(pa.table({"pid": table}), tmp_path / "table.parquet")
    supplied = table[:2900] + ["x1", "x2"] + table[5:15] + table[7:8]  # 100 missing, 2 unknown
    (tmp_path / "supplied").mkdir()
    for part in range(0, len(supplied), 500):  # repeats land in other files than their first
        pq.write_table(
            pa.table({"pid": supplied[part : part + 500]}),
            tmp_path / "supplied" / f"part-{part:05d}.parquet",
        )
    problems = check_ids(str(tmp_path / "table.parquet"), str(tmp_path / "supplied"), "pid")

    counts = {pid: supplied.count(pid) for pid in set(supplied) | set(table)}
    assert problems.unknown == {p for p in counts if p not in table} == {"x1", "x2"}
    assert problems.repeated == {p for p, n in counts.items() if n > 1}
    assert len(problems.repeated) == 10
    assert problems.missing == sum(1 for p in table if counts[p] == 0) == 100
    assert problems.missing_example == min(table[2900:])  # the first in id order


def test_ids_that_go_on_in_the_next_sorted_block_are_counted_whole():
    from rerank_ray.supplied import _id_counts_of_interest

    def block(ids, in_table, supplied):
        return pa.table({"id": ids, "in_table": in_table, "supplied": supplied})

    first = block(["a", "a", "b", "b", "c"], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0])
    second = block(
        ["c", "d", "d", "d", "e", "f", "f"], [0, 1, 0, 0, 0, 1, 0], [1, 0, 1, 1, 1, 0, 1]
    )
    kept = [_id_counts_of_interest(b).to_pylist() for b in (first, second)]
    assert kept[0] == [  # b is whole and fine; a and c are the edges
        {"id": "a", "in_table": 1, "supplied": 1},
        {"id": "c", "in_table": 1, "supplied": 0},
    ]
    assert kept[1] == [  # c the edge, d repeated, e unknown, f the edge
        {"id": "c", "in_table": 0, "supplied": 1},
        {"id": "d", "in_table": 1, "supplied": 2},
        {"id": "e", "in_table": 0, "supplied": 1},
        {"id": "f", "in_table": 1, "supplied": 1},
    ]


def _cli_run(msmarco, out, cache) -> list[str]:
    return [
        sys.executable, "-m", "rerank_ray.cli", "run",
        "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "100", "--num-queries", "12",
        "--embedder", "minilm", "--reranker", "minilm-smoke", "--reranker-max-length", "64",
        "--top-k", "20", "--rows-per-call", "64", "--cache-dir", str(cache), "--out", str(out),
    ]  # fmt: skip


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_metrics(first_run, reranked_run, msmarco, tmp_path):
    _, cache, _ = first_run
    out = tmp_path / "killed"
    command = _cli_run(msmarco, out, cache)
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # kill the driver once the rerank stage is under way
        stages = _manifest(out).get("stages", {}) if (out / "manifest.json").exists() else {}
        if "retrieve" in stages:
            time.sleep(1.0)
            break
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "metrics.json").exists() and not (out / SMOKE_FILE).exists()
    stages_before = _manifest(out)["stages"]

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for stage in ("prepare", "embed", "retrieve"):
        assert f"stage {stage}: up to date, skipped" in resumed.stderr
        assert _manifest(out)["stages"][stage] == stages_before[stage]
    assert "stage rerank: started" in resumed.stderr

    undisturbed, _ = reranked_run  # the same options, in-process, never interrupted
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (undisturbed / "metrics.json").read_text()
    )
    assert pq.read_table(out / SMOKE_FILE).equals(pq.read_table(undisturbed / SMOKE_FILE))


@contextlib.contextmanager
def killing_an_actor(class_part: str, written: Callable[[], list]):
    """Kill (SIGKILL) one actor process whose title has ``class_part``, once ``written()``
    shows that it finished some blocks and has more to do; yields the killed pids."""
    import psutil

    killed: list[int] = []

    def kill_when_busy():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            actors = [
                p.pid
                for p in psutil.process_iter(["cmdline"])
                if any(class_part in part for part in (p.info["cmdline"] or []))
            ]
            if actors and written():
                os.kill(actors[0], signal.SIGKILL)
                killed.append(actors[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        yield killed
    finally:
        killer.join()
    assert killed, "the actor was never killed: the test did not test anything"


@pytest.mark.slow
def test_an_embedding_actor_killed_mid_run_loses_and_duplicates_nothing(
    ray_session, first_run, tmp_path
):
    out, _, _ = first_run
    table = str(out / "data" / "corpus.parquet")
    expected_ids, expected = _vectors(out / "embeddings" / "corpus", "pid")
    options = EmbedderOptions().resolved(_manifest(out)["models"]["embedder"]["path"])
    with killing_an_actor("EmbedActor", lambda: list(tmp_path.glob(".disturbed.tmp-*/*.parquet"))):
        stats = embed_table(
            table, str(tmp_path / "disturbed"), "corpus", "minilm", options, rows_per_call=16
        )
    ids, vectors = _vectors(tmp_path / "disturbed", "pid")
    assert stats.rows == len(ids) == len(expected_ids) == 100
    assert ids.tolist() == expected_ids.tolist()  # every id exactly once
    assert np.min(np.sum(vectors * expected, axis=1)) > 0.9999


@pytest.mark.slow
def test_a_reranking_actor_killed_mid_run_loses_and_duplicates_nothing(
    ray_session, reranked_run, tmp_path
):
    from rerank_ray.rerank import rerank_candidates

    out, _ = reranked_run
    paths = [
        str(out / "retrieval.parquet"),
        str(out / "data" / "corpus.parquet"),
        str(out / "data" / "queries.parquet"),
    ]
    written = lambda: list(tmp_path.glob(".disturbed.parquet.tmp-*/*.parquet"))  # noqa: E731
    with killing_an_actor("RerankActor", written):
        stats = rerank_candidates(
            *paths, str(tmp_path / "disturbed.parquet"), RERANK, rows_per_call=16
        )
    calm = pq.read_table(out / SMOKE_FILE)
    disturbed = pq.read_table(tmp_path / "disturbed.parquet")
    assert stats.rows == disturbed.num_rows == calm.num_rows == 12 * 20
    assert disturbed.select(["qid", "pid", "rank"]).equals(calm.select(["qid", "pid", "rank"]))
    assert np.allclose(disturbed["score"].to_numpy(), calm["score"].to_numpy(), atol=1e-5)


@pytest.mark.slow
def test_odd_input_in_one_uncached_run(first_run, tmp_path):
    """Whitespace-only and over-long passages are kept and embedded (the long one truncated,
    and counted); queries without a relevant passage are left out of the averages, and
    counted; k above the corpus size returns the whole corpus; ``--no-cache`` neither reads
    nor writes the cache."""
    _, cache, _ = first_run
    entries = len(os.listdir(cache / "embeddings"))
    files = {
        "collection": "1\tRay is a framework for scaling Python.\n2\tPandas are bears.\n"
        "3\t   \n4\t" + "tokens " * 3000 + "\n",
        "queries": "10\twhat is ray\n11\twhat is a panda\n12\tunjudged query\n13\tempty\n",
        "qrels": "10 0 1 1\n11 0 2 0\n13 0 3 1\n",  # 11: judged, but nothing relevant
    }
    for name, text in files.items():
        (tmp_path / f"{name}.tsv").write_text(text)
    out = tmp_path / "run"
    args = ["run", "--corpus", str(tmp_path / "collection.tsv"),
            "--queries", str(tmp_path / "queries.tsv"), "--qrels", str(tmp_path / "qrels.tsv"),
            "--embedder", "minilm", "--reranker", "none", "--top-k", "10",
            "--no-cache", "--cache-dir", str(cache), "--out", str(out), "-q"]  # fmt: skip
    assert main(args) == 0
    ids, vectors = _vectors(out / "embeddings" / "corpus", "pid")
    assert ids.tolist() == ["1", "2", "3", "4"] and np.isfinite(vectors).all()
    assert pq.read_table(out / "retrieval.parquet").num_rows == 4 * 4  # k > corpus
    manifest = _manifest(out)
    assert manifest["stages"]["embed"]["reused"] is False
    counts = manifest["stages"]["embed"]["corpus"]["counts"]
    assert counts["rows"] == 4 and counts["truncated"] == 1  # the long passage, cut at 256
    evaluation = manifest["stages"]["evaluate"]
    assert evaluation["evaluated_queries"] == 2 and evaluation["queries_without_relevant"] == 2
    assert json.loads((out / "metrics.json").read_text())["retrieval"]["recall@10"] == 1.0
    assert "2 without any were excluded" in (out / "report.md").read_text()
    assert len(os.listdir(cache / "embeddings")) == entries
