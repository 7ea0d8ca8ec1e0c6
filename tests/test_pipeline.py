"""End to end on real ../shared data: the run directory against bare computations.

Bare means FlagModel.encode + numpy + pytrec_eval, computed here independently of the
pipeline's code paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from rerank_ray.cli import main
from rerank_ray.config import ComputeConfig, RunConfig
from rerank_ray.datasets import DataConfig
from rerank_ray.embed import embedding_matrix
from rerank_ray.embedder import EmbedderOptions
from rerank_ray.io import file_info, join, list_files, open_input, split
from rerank_ray.parquet import parquet_files
from rerank_ray.pipeline import run_pipeline
from rerank_ray.rerank import RerankOptions
from rerank_ray.systems import system_stem

METRICS = ("recall@1", "recall@10", "recall@100", "mrr@1", "mrr@10", "ndcg@10", "map@100")
#: The seed run's rerankers: the smoke-test cross-encoder and the embedder's inner products.
SMOKE, BI = "minilm-smoke", "bi:minilm"


def pytrec_metrics(retrieval_path, qrels_path):
    """The default metrics by pytrec_eval from retrieval.parquet and the normalized qrels."""
    qrels: dict = {}
    for row in pq.read_table(qrels_path).to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    run: dict = {}
    for row in pq.read_table(retrieval_path).to_pylist():
        # Scores from ranks: trec_eval breaks score ties its own way; ranks are the truth.
        run.setdefault(row["qid"], {})[row["pid"]] = 1000.0 - row["rank"]
    return pytrec_from_run(run, qrels)


def pytrec_from_run(run, qrels):
    measures = {"recall.1,10,100", "ndcg_cut.10", "map_cut.100"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    out = {
        "map@100": np.mean([v["map_cut_100"] for v in full.values()]),
        "recall@1": np.mean([v["recall_1"] for v in full.values()]),
        "recall@10": np.mean([v["recall_10"] for v in full.values()]),
        "recall@100": np.mean([v["recall_100"] for v in full.values()]),
        "ndcg@10": np.mean([v["ndcg_cut_10"] for v in full.values()]),
    }
    for k in (1, 10):
        top = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:k]) for q, docs in run.items()}
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
        out[f"mrr@{k}"] = np.mean([v["recip_rank"] for v in rr.values()])
    return out


def read_embeddings(directory, id_column):
    table = pq.read_table(directory)
    return dict(zip(table[id_column].to_pylist(), embedding_matrix(table["embedding"])))


class RunFiles:
    """``run / "name"`` for a run directory at a URI, with the reads these tests use.

    ``os.fspath`` gives the URI, which pyarrow resolves itself (``pq.read_table``).
    """

    def __init__(self, uri: str):
        self.uri = uri

    def __truediv__(self, name: str) -> RunFiles:
        return RunFiles(join(self.uri, name))

    def __fspath__(self) -> str:
        return self.uri

    __str__ = __fspath__

    def read_bytes(self) -> bytes:
        with open_input(self.uri) as handle:
            return handle.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")


#: The seed protocol at test size: the positives of the first rows (one passage each here).
SEED_PASSAGES = 200
SEED_QUERIES = 30


def seed_config(dataset: str, out: str) -> RunConfig:
    return RunConfig(
        out=out,
        data=DataConfig(dataset=dataset, corpus_rows=SEED_PASSAGES, num_queries=SEED_QUERIES),
        embedder="minilm",
        top_k=100,
        rerank=RerankOptions(models=(SMOKE, BI), top_k=10, max_length=128, depths=(1, 5, 10)),
        compute=ComputeConfig(rows_per_call=128),  # several actor calls, several output files
    )


@pytest.fixture(scope="module")
def seed_run(ray_session, msmarco, s3_endpoint):
    """The seed protocol at a size this machine runs in seconds: 200 passages, 30 queries,
    the top 10 of each reranked by two rerankers, the smoke-test cross-encoder and
    ``bi:minilm``.

    Its dataset and run directory are on S3 (moto's server): every stage, Ray's workers
    included, reads and writes through pyarrow's S3 filesystem, and the tests below check
    what it wrote against bare computations. Other tests run on local directories.
    """
    import uuid

    import pyarrow.fs as pafs

    bucket = "seed-" + uuid.uuid4().hex[:12]
    s3 = pafs.S3FileSystem(endpoint_override=s3_endpoint, allow_bucket_creation=True)
    s3.create_dir(bucket)
    with s3.open_output_stream(f"{bucket}/msmarco/dev.jsonl") as upload:
        upload.write((msmarco / "dev.jsonl").read_bytes())
    config = seed_config(f"s3://{bucket}/msmarco/dev.jsonl", f"s3://{bucket}/runs/seed")
    metrics = run_pipeline(config)
    return RunFiles(config.out), metrics


def test_run_directory_contract(seed_run):
    out, metrics = seed_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert list(metrics) == ["retrieval", SMOKE, BI]
    assert tuple(metrics["retrieval"]) == tuple(metrics[SMOKE]) == tuple(metrics[BI]) == METRICS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["embedder"] == "minilm"
    assert manifest["models"]["embedder"]["fingerprint"].startswith("sha256:")
    assert manifest["models"]["embedder"]["options"]["pooling"] == "mean"
    assert manifest["data"]["corpus"]["rows"] == SEED_PASSAGES
    assert manifest["data"]["queries"]["rows"] == SEED_QUERIES
    for stage in ("prepare", "embed", "retrieve", "rerank", "evaluate"):
        assert manifest["stages"][stage]["wall_seconds"] > 0
    assert manifest["stages"]["embed"]["resources"]["max_actors"] == 1
    assert manifest["stages"]["embed"]["resources"]["num_gpus_per_actor"] == 0
    for role, rows in (
        ("corpus", SEED_PASSAGES),
        ("queries", SEED_QUERIES),
    ):  # one pool, one actor, both roles
        part = manifest["stages"]["embed"][role]
        assert part["resources"]["roles_in_pool"] == ["corpus", "queries"]
        assert part["resources"]["actors_started"] == 1 and part["counts"]["rows"] == rows
    assert manifest["versions"]["ray"] == "2.60.0"
    retrieval = pq.read_table(out / "retrieval.parquet")
    assert retrieval.schema.names == ["qid", "pid", "rank", "score"]
    assert retrieval.num_rows == SEED_QUERIES * 100
    report = (out / "report.md").read_text()
    assert f"{metrics['retrieval']['mrr@10']:.4f}" in report and "minilm" in report
    assert "smoke-test reranker" in report and "mean nothing" in report
    assert "recall@10 and recall@100 cannot change" in report
    for system in (SMOKE, BI):
        effect = manifest["stages"]["evaluate"]["rerank_effect"][system]
        assert sum(effect.values()) == SEED_QUERIES
        reranker = manifest["models"]["rerankers"][system]
        assert reranker["name"] == system and reranker["fingerprint"].startswith("sha256:")
        scored = manifest["stages"]["rerank"]["systems"][system]
        assert scored["rows"] == SEED_QUERIES * 10 and scored["rows_per_second"] > 0
        assert f"### {system}" in report
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["stages"]["rerank"]["rows"] == 2 * SEED_QUERIES * 10
    assert [split(p)[1] for p in list_files(str(out / "rerank"))] == [
        "bi_minilm.parquet", "minilm-smoke.parquet"
    ]  # fmt: skip


def test_the_same_run_again_on_s3_skips_every_stage_and_left_no_staging(seed_run):
    import pyarrow.fs as pafs

    from rerank_ray.io import read_json, resolve

    out, metrics = seed_run
    manifest = read_json(str(out / "manifest.json"))
    config = RunConfig.from_dict(manifest["config"])
    assert run_pipeline(config) == metrics
    again = read_json(str(out / "manifest.json"))
    for stage in ("prepare", "embed", "retrieve", "rerank"):
        assert again["stages"][stage] == manifest["stages"][stage], stage
    filesystem, root = resolve(out.uri)
    names = [i.path for i in filesystem.get_file_info(pafs.FileSelector(root, recursive=True))]
    assert len(parquet_files(str(out / "embeddings" / "corpus"))) > 1
    assert not [name for name in names if ".tmp-" in name]


def test_metrics_equal_pytrec_eval_from_the_run_files(seed_run):
    out, metrics = seed_run
    reference = pytrec_metrics(out / "retrieval.parquet", out / "data" / "qrels.parquet")
    for name in METRICS:
        assert metrics["retrieval"][name] == pytest.approx(reference[name], abs=1e-12), name


def test_embeddings_and_retrieval_equal_bare_flagmodel_and_numpy(seed_run):
    from FlagEmbedding import FlagModel

    out, metrics = seed_run
    corpus = pq.read_table(out / "data" / "corpus.parquet").to_pydict()
    queries = pq.read_table(out / "data" / "queries.parquet").to_pydict()
    model = FlagModel(
        json.loads((out / "manifest.json").read_text())["models"]["embedder"]["path"],
        pooling_method="mean",
        use_fp16=False,
        devices=["cpu"],
        passage_max_length=256,
        query_max_length=256,
    )
    bare_corpus = model.encode_corpus(corpus["text"], batch_size=64)
    bare_queries = model.encode_queries(queries["text"], batch_size=64)

    ours_corpus = read_embeddings(out / "embeddings" / "corpus", "pid")
    ours_queries = read_embeddings(out / "embeddings" / "queries", "qid")
    assert (
        len(ours_corpus) == SEED_PASSAGES and len(ours_queries) == SEED_QUERIES
    )  # one row per id: none lost
    ours_c = np.stack([ours_corpus[p] for p in corpus["pid"]])
    ours_q = np.stack([ours_queries[q] for q in queries["qid"]])
    assert np.min(np.sum(ours_c * bare_corpus, axis=1)) > 0.9999
    assert np.min(np.sum(ours_q * bare_queries, axis=1)) > 0.9999

    # Bare numpy top-k on the bare embeddings, then pytrec_eval: the same metrics.
    scores = bare_queries @ bare_corpus.T
    pids = np.array(corpus["pid"])
    run = {}
    for qid, row in zip(queries["qid"], scores):
        order = np.argsort(-row, kind="stable")[:100]
        run[qid] = {pids[i]: float(row[i]) for i in order}
    qrels: dict = {}
    for row in pq.read_table(out / "data" / "qrels.parquet").to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    bare = pytrec_from_run(run, qrels)
    for name in METRICS:
        assert metrics["retrieval"][name] == pytest.approx(bare[name], abs=1e-9), name

    # The pipeline's own top-k equals float64 brute force over its own embeddings.
    retrieval = pq.read_table(out / "retrieval.parquet").to_pylist()
    ours_scores = ours_q.astype(np.float64) @ ours_c.astype(np.float64).T
    for q, qid in enumerate(queries["qid"]):
        got = [r for r in retrieval if r["qid"] == qid]
        expected = np.lexsort((pids, -ours_scores[q]))[:100]
        assert [r["pid"] for r in sorted(got, key=lambda r: r["rank"])] == pids[expected].tolist()


def test_rerank_scores_equal_flagreranker_on_the_same_pairs(seed_run):
    from FlagEmbedding import FlagReranker

    out, _ = seed_run
    manifest = json.loads((out / "manifest.json").read_text())
    rerank = pq.read_table(out / "rerank" / "minilm-smoke.parquet")
    assert rerank.schema.names == [
        "qid", "pid", "rank", "score", "relevance_score", "retrieval_rank"
    ]  # fmt: skip
    rows = rerank.to_pylist()
    queries = dict(zip(*pq.read_table(out / "data" / "queries.parquet").to_pydict().values()))
    passages = dict(zip(*pq.read_table(out / "data" / "corpus.parquet").to_pydict().values()))
    bare = FlagReranker(
        manifest["models"]["rerankers"][SMOKE]["path"], use_fp16=False, devices=["cpu"]
    )
    expected = bare.compute_score(
        [(queries[r["qid"]], passages[r["pid"]]) for r in rows], max_length=128
    )
    assert np.max(np.abs(np.array([r["score"] for r in rows]) - expected)) < 1e-4
    assert np.allclose(
        [r["relevance_score"] for r in rows], 1 / (1 + np.exp(-np.array(expected))), atol=1e-5
    )
    # the reranked candidates are exactly the top 10 retrieved, once each
    retrieval = pq.read_table(out / "retrieval.parquet").to_pylist()
    top = {(r["qid"], r["pid"], r["rank"]) for r in retrieval if r["rank"] <= 10}
    assert {(r["qid"], r["pid"], r["retrieval_rank"]) for r in rows} == top
    for qid in queries:
        mine = sorted((r for r in rows if r["qid"] == qid), key=lambda r: r["rank"])
        assert [r["rank"] for r in mine] == list(range(1, 11))
        assert all(a["score"] >= b["score"] for a, b in zip(mine, mine[1:]))


@pytest.mark.parametrize("system", [SMOKE, BI])
def test_rerank_metrics_equal_pytrec_eval_on_the_reranked_lists(seed_run, system):
    out, metrics = seed_run
    reranked = pq.read_table(out / "rerank" / f"{system_stem(system)}.parquet").to_pylist()
    retrieval = pq.read_table(out / "retrieval.parquet").to_pylist()
    run: dict = {}
    for r in reranked:  # the reranked top 10 first, then the retrieval's ranks 11..100
        run.setdefault(r["qid"], {})[r["pid"]] = 1000.0 - r["rank"]
    for r in retrieval:
        if r["rank"] > 10:
            run[r["qid"]][r["pid"]] = 1000.0 - r["rank"]
    qrels: dict = {}
    for row in pq.read_table(out / "data" / "qrels.parquet").to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    reference = pytrec_from_run(run, qrels)
    for name in METRICS:
        assert metrics[system][name] == pytest.approx(reference[name], abs=1e-12), name
    # reranking the top 10 cannot change recall at 10 or deeper
    assert metrics[system]["recall@100"] == metrics["retrieval"]["recall@100"]


def test_float16_storage_halves_the_files_and_keeps_the_metrics(seed_run, msmarco, tmp_path):
    """The seed run's vectors, supplied to a float16 run: half the bytes, the top-k exact over
    the float16 vectors, recall@100 unchanged."""
    out, metrics = seed_run
    half = tmp_path / "half"
    config = RunConfig(
        out=str(half),
        data=DataConfig(
            dataset=str(msmarco / "dev.jsonl"), corpus_rows=SEED_PASSAGES, num_queries=SEED_QUERIES
        ),
        embedder="minilm",
        embedding=EmbedderOptions(storage="float16"),
        rerank=RerankOptions(models="none"),
        corpus_embeddings=str(out / "embeddings" / "corpus"),
        query_embeddings=str(out / "embeddings" / "queries"),
    )
    half_metrics = run_pipeline(config)
    corpus_files = pq.read_table(half / "embeddings" / "corpus")
    assert _is_float16_vectors(corpus_files, 384)
    size = lambda d: sum(file_info(f).size for f in parquet_files(str(d)))  # noqa: E731
    assert size(half / "embeddings" / "corpus") < 0.6 * size(out / "embeddings" / "corpus")
    assert half_metrics["retrieval"]["recall@100"] == metrics["retrieval"]["recall@100"]
    for name in METRICS:
        assert half_metrics["retrieval"][name] == pytest.approx(
            metrics["retrieval"][name], abs=0.02
        )

    corpus = read_embeddings(half / "embeddings" / "corpus", "pid")
    queries = read_embeddings(half / "embeddings" / "queries", "qid")
    full = read_embeddings(out / "embeddings" / "corpus", "pid")
    pids = np.array(sorted(corpus))
    vectors = np.stack([corpus[p] for p in pids]).astype(np.float64)
    assert np.array_equal(vectors, np.stack([full[p] for p in pids]).astype(np.float16))
    retrieval = pq.read_table(half / "retrieval.parquet").sort_by(
        [("qid", "ascending"), ("rank", "ascending")]
    )
    got = retrieval.to_pydict()
    for i, qid in enumerate(sorted(queries)):
        scores = vectors @ queries[qid].astype(np.float16).astype(np.float64)
        expected = pids[np.lexsort((pids, -scores))[:100]].tolist()
        assert got["pid"][i * 100 : (i + 1) * 100] == expected, qid


def _is_float16_vectors(table, dim):
    kind = table.schema.field("embedding").type
    return kind.value_type == pa.float16() and kind.list_size == dim


def test_embed_actor_writes_float16_when_asked(minilm_path):
    from rerank_ray.embed import EmbedActor

    texts = ["what is a cat", "a cat is a small domesticated carnivore", ""]
    batch = pa.table({"pid": ["a", "b", "c"], "text": texts})
    wide = EmbedActor("minilm", EmbedderOptions(), "corpus")(batch)
    half = EmbedActor("minilm", EmbedderOptions(storage="float16"), "corpus")(batch)
    assert _is_float16_vectors(half, 384)
    assert np.array_equal(
        embedding_matrix(half["embedding"], keep_dtype=True),
        embedding_matrix(wide["embedding"]).astype(np.float16),
    )


@pytest.mark.slow
def test_tokenizing_upstream_gives_the_same_vectors(ray_session, msmarco, tmp_path):
    """The GPU layout (tokenize in CPU tasks, model in actors) equals the model tokenizing
    its own texts in this process (what a one-actor pool runs), counts included."""
    from rerank_ray.embed import _tokenized, embed_tables
    from rerank_ray.embedder import Embedder
    from rerank_ray.models import resolve_model_path

    rows = [json.loads(line) for line in (msmarco / "dev.jsonl").open().readlines()[:24]]
    options = EmbedderOptions(query_instruction="query: ", passage_max_length=32)
    options = options.resolved(resolve_model_path("minilm"))
    texts = {"corpus": [r["positive"][0] for r in rows], "queries": [r["query"] for r in rows]}
    outputs = {}
    for role, role_texts in texts.items():
        column = "pid" if role == "corpus" else "qid"
        path = tmp_path / f"{role}.parquet"
        pq.write_table(
            pa.table({column: [f"{i:02d}" for i in range(24)], "text": role_texts}), path
        )
        outputs[role] = (str(path), str(tmp_path / f"{role}-vectors"))
    stats = embed_tables(outputs, "minilm", options, rows_per_call=10, tokenize_upstream=True)
    assert stats["corpus"].resources["tokenized_upstream"] is True

    embedder = Embedder("minilm", options, device="cpu")
    for role, encode in (("corpus", embedder.encode_corpus), ("queries", embedder.encode_queries)):
        embedder.stats.rows = embedder.stats.truncated = embedder.stats.tokens = 0
        expected = encode(texts[role])
        counts = stats[role].counts
        assert (counts["rows"], counts["truncated"], counts["tokens"]) == (
            embedder.stats.rows,
            embedder.stats.truncated,
            embedder.stats.tokens,
        ), role
        ours = read_embeddings(outputs[role][1], "pid" if role == "corpus" else "qid")
        vectors = np.stack([ours[f"{i:02d}"] for i in range(24)])
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert stats["corpus"].counts["truncated"] > 0  # 32 tokens cut some passages
    # The instruction reaches the queries when tokenized upstream too.
    batch = pa.table({"id": ["a"], "text": ["cat"], "role": ["queries"]})
    assert _tokenized(batch, "minilm", options)["input_ids"].to_pylist()[0][:3] == [
        101,
        23032,
        1024,
    ]


def _tsv_subset(msmarco, directory, num_queries=30, num_passages=250):
    """The first queries of the official TSV files, their judged passages and some others."""
    queries = (msmarco / "queries.tsv").read_text(encoding="utf-8").splitlines()[:num_queries]
    qids = {line.split("\t")[0] for line in queries}
    qrels = [
        line
        for line in (msmarco / "qrels.tsv").read_text(encoding="utf-8").splitlines()
        if line.split()[0] in qids
    ]
    judged = {line.split()[2] for line in qrels}
    collection = []
    for line in (msmarco / "collection.tsv").read_text(encoding="utf-8").splitlines():
        if line.split("\t")[0] in judged or len(collection) < num_passages - len(judged):
            collection.append(line)
    paths = {}
    for name, lines in (("collection", collection), ("queries", queries), ("qrels", qrels)):
        paths[name] = directory / f"{name}.tsv"
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


@pytest.mark.slow
def test_cli_run_on_official_tsv_layout(ray_session, msmarco, tmp_path, capsys):
    paths = _tsv_subset(msmarco, tmp_path)
    out = tmp_path / "run"
    status = main(
        [
            "run",
            "--corpus", str(paths["collection"]),
            "--queries", str(paths["queries"]),
            "--qrels", str(paths["qrels"]),
            "--embedder", "minilm",
            "--reranker", "none",
            "--top-k", "20",
            "--out", str(out),
            "--quiet",
        ]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "| retrieval |" in printed and str(out / "report.md") in printed
    metrics = json.loads((out / "metrics.json").read_text())["retrieval"]
    reference = pytrec_metrics(out / "retrieval.parquet", out / "data" / "qrels.parquet")
    for name in ("recall@1", "recall@10", "mrr@10", "ndcg@10"):
        assert metrics[name] == pytest.approx(reference[name], abs=1e-12)
    assert metrics["recall@10"] > 0.5  # real model, real data: far above chance (10 / 250)
    # 20 passages retrieved per query: recall@100 would be recall@20 mislabelled
    assert "recall@100" not in metrics
    note = "recall@100, map@100 not reported: only the top 20 passages were retrieved per query."
    assert f"NOTE: {note}" in printed and note in (out / "report.md").read_text()

    assert not (out / "rerank").exists()

    # evaluate alone, on the existing run directory, gives the same numbers
    (out / "metrics.json").unlink()
    assert main(["evaluate", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["retrieval"] == metrics

    # rerank the existing run: no re-embedding, the retrieval metrics stay, a rerank section
    embeddings_before = sorted(
        p.stat().st_mtime_ns for p in (out / "embeddings").rglob("*.parquet")
    )
    status = main(
        [
            "rerank",
            "--run",
            str(out),
            "--reranker",
            "minilm-smoke",
            "--rerank-top-k",
            "5",
            "--quiet",
        ]
    )
    assert status == 0
    assert "smoke-test" in capsys.readouterr().out
    after = json.loads((out / "metrics.json").read_text())
    assert after["retrieval"] == metrics and set(after[SMOKE]) == set(metrics)
    assert after[SMOKE]["recall@10"] == metrics["recall@10"]  # depth 5 < 10: unchanged
    assert (
        sorted(p.stat().st_mtime_ns for p in (out / "embeddings").rglob("*.parquet"))
        == embeddings_before
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["config"]["rerank"]["top_k"] == 5
        and manifest["stages"]["rerank"]["rows"] == 30 * 5
    )


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "collection.tsv").write_text("1\tp\n")  # the queries are missing
    completed = subprocess.run(
        [
            sys.executable, "-m", "rerank_ray.cli", "run",
            "--corpus", str(tmp_path / "collection.tsv"),
            "--queries", str(tmp_path / "queries.tsv"),
            "--qrels", str(tmp_path / "qrels.tsv"),
            "--embedder", "minilm", "--out", str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    errors = [line for line in completed.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"rerank-ray: error: {tmp_path / 'queries.tsv'}: no such file"]
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_stage_on_a_run_directory_without_its_inputs(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"config": RunConfig(out=str(run)).to_dict(), "stages": {}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert main(["retrieve", "--out", str(run)]) == 2
    assert "run the 'embed' stage first" in capsys.readouterr().err


def test_evaluate_on_metrics_all_deeper_than_the_rankings_is_refused_and_keeps_the_run(
    msmarco, tmp_path, capsys
):
    """A run ranked 5 passages a query (candidates written here: no Ray, no model), evaluated
    again on metrics none of which 5 passages measure: refused in one line, its evaluation
    left as it was; with one measurable metric among them, that one and a note."""
    from rerank_ray.formats import passage_id

    rows = [json.loads(line) for line in (msmarco / "dev.jsonl").open().readlines()[:10]]
    pids = list(dict.fromkeys(passage_id(text) for row in rows for text in row["positive"]))
    lines = [f"{q} Q0 {pid} 1 {len(pids) - i} t\n" for q in "012" for i, pid in enumerate(pids)]
    (tmp_path / "run.trec").write_text("".join(lines))
    out = tmp_path / "run"
    code = main(
        ["run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "10", "--num-queries",
         "3", "--candidates", str(tmp_path / "run.trec"), "--embedder", "/no/such/embedder",
         "--reranker", "none", "--top-k", "5", "--out", str(out), "-q"]
    )  # fmt: skip
    assert code == 0
    names = ("manifest.json", "metrics.json", "per_query.parquet", "report.md", "report.png")
    before = {name: (out / name).read_bytes() for name in names}
    capsys.readouterr()
    assert main(["evaluate", "--out", str(out), "--metrics", "R@1000 nDCG@10", "-q"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "rerank-ray: error: no requested metric can be reported at depth 5: recall@1000 needs"
        " 1000, ndcg@10 needs 10 (the rankings hold the top 5 passages per query)\n"
    )
    assert "| system |" not in captured.out
    assert {name: (out / name).read_bytes() for name in names} == before
    assert main(["evaluate", "--out", str(out), "--metrics", "R@1000 R@5", "-q"]) == 0
    note = "NOTE: recall@1000 not reported: only the top 5 passages were retrieved per query."
    assert note in capsys.readouterr().out.splitlines()
    assert list(json.loads((out / "metrics.json").read_text())["retrieval"]) == ["recall@5"]


def test_role_files_publish_every_role_whole_or_nothing(tmp_path):
    """The embed stage's datasink through its lifecycle, as Ray Data calls it: rows land per
    role, a role without rows gets an empty directory, a failed write leaves nothing."""
    from types import SimpleNamespace

    from rerank_ray.embed import to_fixed_size_list
    from rerank_ray.embed_sink import RoleFiles

    outputs = {"corpus": str(tmp_path / "c"), "queries": str(tmp_path / "q")}
    block = pa.table(
        {
            "id": ["p1", "p2", "q1"],
            "role": ["corpus", "corpus", "queries"],
            "embedding": to_fixed_size_list(np.eye(3, dtype=np.float32)),
        }
    )
    sink = RoleFiles(outputs)
    sink.on_write_start()
    assert sink.write([block], SimpleNamespace(task_idx=7)) == {"corpus": 2, "queries": 1}
    assert not (tmp_path / "c").exists()  # nothing published before the write completes
    sink.on_write_complete(None)
    assert sink.rows == {"corpus": 2, "queries": 1}
    assert pq.read_table(tmp_path / "c").column("pid").to_pylist() == ["p1", "p2"]
    assert pq.read_table(tmp_path / "q").column("qid").to_pylist() == ["q1"]

    empty = RoleFiles({"corpus": str(tmp_path / "e")})
    empty.on_write_complete(None)  # no block reached the sink: Ray never called on_write_start
    assert empty.rows == {"corpus": 0} and os.listdir(tmp_path / "e") == []

    failed = RoleFiles({"corpus": str(tmp_path / "f")})
    failed.on_write_start()
    failed.write([block.slice(0, 2)], SimpleNamespace(task_idx=0))
    failed.on_write_failed(RuntimeError("an actor died"))
    assert sorted(os.listdir(tmp_path)) == ["c", "e", "q"]  # no output, no temporary


def test_per_query_values_and_significance_come_from_pytrec_evals_per_query_values(seed_run):
    """per_query.parquet holds pytrec_eval's per-query values of both systems; significance.json
    is the paired tests on exactly those vectors; the report and the CLI's table mark them."""
    from rerank_ray.significance import compare_systems

    out, metrics = seed_run
    qrels: dict = {}
    for row in pq.read_table(out / "data" / "qrels.parquet").to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    runs: dict = {"retrieval": {}, SMOKE: {}, BI: {}}
    for row in pq.read_table(out / "retrieval.parquet").to_pylist():
        runs["retrieval"].setdefault(row["qid"], {})[row["pid"]] = 1000.0 - row["rank"]
        if row["rank"] > 10:  # a reranker's list: its top 10, then the retrieval's order
            for system in (SMOKE, BI):
                runs[system].setdefault(row["qid"], {})[row["pid"]] = 1000.0 - row["rank"]
    for system in (SMOKE, BI):
        for row in pq.read_table(out / "rerank" / f"{system_stem(system)}.parquet").to_pylist():
            runs[system].setdefault(row["qid"], {})[row["pid"]] = 1000.0 - row["rank"]
    expected: dict = {}
    for system, run in runs.items():
        full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10"}).evaluate(run)
        top = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[:10]) for q, d in run.items()}
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top)
        expected[system] = {
            q: {
                "ndcg@10": v["ndcg_cut_10"],
                "recall@10": v["recall_10"],
                "mrr@10": rr[q]["recip_rank"],
            }
            for q, v in full.items()
        }
    stored = pq.read_table(out / "per_query.parquet").to_pylist()
    assert len(stored) == 3 * SEED_QUERIES * len(METRICS)
    got = {(r["system"], r["qid"], r["metric"]): r["value"] for r in stored}
    for system, queries in expected.items():
        for qid, values in queries.items():
            for metric, value in values.items():
                assert got[(system, qid, metric)] == pytest.approx(value, abs=1e-12)
    significance = json.loads((out / "significance.json").read_text())
    mine = compare_systems(expected, "retrieval", ["ndcg@10", "recall@10", "mrr@10"])
    stored_comparisons = {(c["system"], c["metric"]): c for c in significance["comparisons"]}
    assert len(stored_comparisons) == 2 * len(METRICS)  # both rerankers, Holm across them
    for comparison in mine:
        key = (comparison.system, comparison.metric)
        assert stored_comparisons[key] == pytest.approx(comparison.to_dict())
    for system in (SMOKE, BI):
        # reranking the top 10 cannot move recall@10: no difference, nothing significant
        assert stored_comparisons[(system, "recall@10")]["mean_difference"] == 0
        assert not stored_comparisons[(system, "recall@10")]["significant"]
    report = (out / "report.md").read_text()
    assert "| minilm-smoke | mrr@10 | 30 |" in report and "paired randomization" in report
    assert "| bi:minilm | mrr@10 | 30 |" in report

    # The most improved and hurt queries: the first relevant passage's rank in each run's list.
    def first(system, qid):
        ranked = sorted(runs[system][qid], key=lambda pid: -runs[system][qid][pid])
        return next((r for r, pid in enumerate(ranked, 1) if qrels[qid].get(pid, 0) >= 1), None)

    changed = json.loads((out / "manifest.json").read_text())["stages"]["evaluate"]["most_changed"]
    changed = changed[SMOKE]
    table = pq.read_table(out / "data" / "queries.parquet").to_pydict()
    texts = dict(zip(table["qid"], table["text"]))
    gains = []
    for kind, sign in (("improved", 1), ("hurt", -1)):
        assert len(changed[kind]) <= 10
        for row in changed[kind]:
            before, after = first("retrieval", row["qid"]), first(SMOKE, row["qid"])
            assert (row["before"], row["after"]) == (before, after)
            assert row["query"] == texts[row["qid"]]
            gain = (1 / after if after else 0) - (1 / before if before else 0)
            assert sign * gain > 0
            gains.append(sign * gain)
    if changed["improved"]:
        assert "Most improved queries:" in report


@pytest.mark.parametrize("system", [SMOKE, BI])
def test_depth_sweep_equals_pytrec_eval_on_the_stored_scores_and_scores_nothing_again(
    seed_run, system
):
    """At depth d a reranker's list is its pairs with retrieval rank <= d ordered by their
    stored scores, then the retrieval's order: pytrec_eval on such a run gives the sweep's
    figures; depth 10 (the rerank's own depth) is the reranker's row; the pairs are the
    stage's, each scored once."""
    out, metrics = seed_run
    manifest = json.loads((out / "manifest.json").read_text())
    sweep = manifest["stages"]["evaluate"]["depth_sweep"][system]
    assert [row["depth"] for row in sweep] == [1, 5, 10]
    qrels: dict = {}
    for row in pq.read_table(out / "data" / "qrels.parquet").to_pylist():
        qrels.setdefault(row["qid"], {})[row["pid"]] = row["relevance"]
    reranked = pq.read_table(out / "rerank" / f"{system_stem(system)}.parquet").to_pylist()
    retrieval = pq.read_table(out / "retrieval.parquet").to_pylist()
    scored = manifest["stages"]["rerank"]["systems"][system]
    for row in sweep:
        depth = row["depth"]
        run: dict = {}
        for r in retrieval:  # below every reranked score
            run.setdefault(r["qid"], {})[r["pid"]] = -1e6 - r["rank"]
        head = [r for r in reranked if r["retrieval_rank"] <= depth]
        for r in head:
            run[r["qid"]][r["pid"]] = r["score"]
        reference = pytrec_from_run(run, qrels)
        for name, value in row["metrics"].items():
            assert value == pytest.approx(reference[name], abs=1e-12), (depth, name)
        assert row["pairs_per_1000_queries"] == pytest.approx(1000 * len(head) / SEED_QUERIES)
        busy = scored["counts"]["busy_seconds"]
        expected = busy * len(head) / len(reranked) * 1000 / SEED_QUERIES
        assert row["actor_seconds_per_1000_queries"] == pytest.approx(expected, abs=1e-3)
    assert sweep[-1]["metrics"] == pytest.approx(metrics[system])
    # every pair was scored once, by the rerank stage; the sweep only reordered stored scores
    assert scored["counts"]["rows"] == len(reranked) == 10 * SEED_QUERIES
    assert len({(r["qid"], r["pid"]) for r in reranked}) == len(reranked)
    assert "How deep to rerank" in (out / "report.md").read_text()
