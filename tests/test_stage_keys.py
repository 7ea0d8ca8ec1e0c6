"""Stage keys hold what an output depends on: a model changed in place is embedded again, a
speed-only option is not (the in-process CLI on the session's Ray, no cache)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from rerank_ray.cli import main
from rerank_ray.embed import embedding_matrix

#: Several whole runs; tests/test_keys.py checks every key without running a stage.
pytestmark = pytest.mark.slow


def bare_minilm(path: str):
    """The oracle: a FlagModel built here with MiniLM's options written out (mean pooling,
    256 tokens, normalized, float32 on the CPU)."""
    from FlagEmbedding import FlagModel

    return FlagModel(
        path, pooling_method="mean", normalize_embeddings=True, query_max_length=256,
        passage_max_length=256, use_fp16=False, devices=["cpu"],
    )  # fmt: skip


def _vectors(run) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(run / "embeddings" / "corpus").sort_by("pid")
    return table["pid"].to_pylist(), embedding_matrix(table["embedding"])


def test_weights_changed_in_place_re_embed_and_a_batch_size_does_not(
    ray_session, msmarco, minilm_path, tmp_path
):
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(minilm_path, model)
    out = tmp_path / "run"
    command = [
        "run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "20",
        "--num-queries", "3", "--embedder", str(model), "--reranker", "none", "--top-k", "5",
        "--no-cache", "--out", str(out), "-q",
    ]  # fmt: skip
    assert main(command) == 0
    pids, before = _vectors(out)
    first = json.loads((out / "manifest.json").read_text())

    # Retrained in place: same folder, same name, other weights.
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = "encoder.layer.0.attention.output.dense.weight"
    generator = torch.Generator().manual_seed(0)
    tensors[name] = tensors[name] + 0.05 * torch.randn(tensors[name].shape, generator=generator)
    save_file(tensors, weights, metadata={"format": "pt"})
    assert main(command) == 0
    second = json.loads((out / "manifest.json").read_text())
    assert second["stages"]["embed"]["key"] != first["stages"]["embed"]["key"]
    assert second["models"]["embedder"]["fingerprint"] != first["models"]["embedder"]["fingerprint"]
    assert second["stages"]["embed"]["corpus"]["reused"] is False
    same_pids, after = _vectors(out)
    assert same_pids == pids
    assert np.max(np.abs(after - before)) > 1e-3  # the old vectors are gone
    texts = {
        row["pid"]: row["text"]
        for row in pq.read_table(out / "data" / "corpus.parquet").to_pylist()
    }
    bare = bare_minilm(str(model))
    expected = bare.encode_corpus([texts[p] for p in pids], convert_to_numpy=True)
    assert np.min(np.sum(after * expected, axis=1)) > 1 - 1e-5  # the new model's vectors

    # A speed-only option: every stage is up to date, the embed record is untouched.
    assert main([*command, "--batch-size", "8"]) == 0
    third = json.loads((out / "manifest.json").read_text())
    assert third["stages"]["embed"] == second["stages"]["embed"]
    assert third["stages"]["retrieve"] == second["stages"]["retrieve"]


def _manifest(run) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_edits_in_place_are_seen_and_stale_or_relabelled_outputs_are_refused(
    ray_session, msmarco, minilm_path, tmp_path, capsys, monkeypatch
):
    """A source edited in place is read again; `evaluate` refuses a rerank output left by an
    interrupted rerank with other options, and one computed with another reranker; supplied
    vectors fixed in place are imported again."""
    rows = (msmarco / "dev.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:20]
    dataset = tmp_path / "dev.jsonl"
    dataset.write_text("".join(rows), encoding="utf-8")
    out = tmp_path / "run"
    command = [
        "run", "--dataset", str(dataset), "--corpus-rows", "20", "--num-queries", "3",
        "--embedder", "minilm", "--reranker", "minilm-smoke", "--rerank-top-k", "3",
        "--top-k", "5", "--no-cache", "--out", str(out), "-q",
    ]  # fmt: skip
    assert main(command) == 0
    first = _manifest(out)

    # The first query edited in place: same path, other content.
    row = json.loads(rows[0])
    row["query"] = "which volcano erupted in 1883"
    rows[0] = json.dumps(row) + "\n"
    dataset.write_text("".join(rows), encoding="utf-8")
    assert main(command) == 0
    second = _manifest(out)
    assert second["stages"]["prepare"]["key"] != first["stages"]["prepare"]["key"]
    queries = pq.read_table(out / "data" / "queries.parquet").to_pylist()
    edited = [q["qid"] for q in queries if q["text"] == row["query"]]
    assert len(edited) == 1
    stored = pq.read_table(out / "embeddings" / "queries").to_pylist()
    vector = np.array([r["embedding"] for r in stored if r["qid"] == edited[0]][0])
    bare = bare_minilm(minilm_path)
    expected = bare.encode_queries([row["query"]], convert_to_numpy=True)[0]
    assert float(vector @ expected) > 1 - 1e-5  # the edited text's vector, not the old one

    # A rerank with another depth, interrupted: evaluate refuses the old depth's output.
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("rerank_ray.rerank.rerank_candidates", interrupted)
    assert main(["rerank", "--run", str(out), "--rerank-top-k", "2", "-q"]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "-q"]) == 2
    refusal = "the rerank stage's output is missing or was computed with other inputs or options"
    assert refusal in capsys.readouterr().err
    assert not (out / "metrics.json").exists()  # no finished-looking result is left
    assert main(["rerank", "--run", str(out), "--rerank-top-k", "2", "-q"]) == 0
    assert _manifest(out)["stages"]["rerank"]["rows"] == 3 * 2
    metrics = (out / "metrics.json").read_text()

    # Evaluating it as another reranker's (a real model folder, other weights): refused.
    other = tmp_path / "other-reranker"
    shutil.copytree(_manifest(out)["models"]["rerankers"]["minilm-smoke"]["path"], other)
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--reranker", str(other), "-q"]) == 2
    assert refusal in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == metrics

    # Supplied vectors missing a passage, then fixed in place: imported again.
    table = pq.read_table(out / "embeddings" / "corpus")
    supplied = tmp_path / "corpus.parquet"
    pq.write_table(table.slice(1), supplied)
    byo = [*command[: command.index("--out")], "--out", str(tmp_path / "byo"), "-q"]
    byo += ["--corpus-embeddings", str(supplied)]
    assert main(byo) == 2
    assert "have no embedding" in capsys.readouterr().err
    pq.write_table(table, supplied)
    assert main(byo) == 0
    fixed = json.loads((tmp_path / "byo" / "metrics.json").read_text())
    assert fixed["retrieval"] == json.loads(metrics)["retrieval"]


def test_adding_a_reranker_scores_only_it_and_a_damaged_or_dropped_one_is_not_kept(
    ray_session, msmarco, tmp_path, monkeypatch, capsys
):
    """Each reranker's file records the key it was scored with: a second reranker added to a
    run is the only one scored; a file whose record does not verify is scored again; a
    reranker dropped from the run loses its file; the one-file layout of earlier versions is
    removed."""
    import rerank_ray.rerank

    scored: list[str] = []
    real = rerank_ray.rerank.rerank_candidates

    def counting(*args, **kwargs):
        scored.append(args[4].model)
        return real(*args, **kwargs)

    monkeypatch.setattr("rerank_ray.rerank.rerank_candidates", counting)
    out = tmp_path / "run"
    base = [
        "run", "--dataset", str(msmarco / "dev.jsonl"), "--corpus-rows", "20", "--num-queries",
        "3", "--retriever", "bm25", "--top-k", "5", "--no-cache", "--out", str(out), "-q",
    ]  # fmt: skip
    assert main([*base, "--reranker", "minilm-smoke"]) == 0
    smoke = out / "rerank" / "minilm-smoke.parquet"
    first = smoke.read_bytes()
    (out / "rerank.parquet").write_bytes(b"an earlier version's single rerank file")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "-q"]) == 2
    assert "an earlier version's layout (one rerank.parquet)" in capsys.readouterr().err

    both = [*base, "--reranker", "minilm-smoke", "--reranker", "bi:minilm"]
    assert main(both) == 0
    assert scored == ["minilm-smoke", "bi:minilm"]  # the new one only, after the first run
    assert smoke.read_bytes() == first and not (out / "rerank.parquet").exists()
    manifest = _manifest(out)
    assert manifest["stages"]["rerank"]["systems"]["minilm-smoke"]["reused"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["retrieval", "minilm-smoke", "bi:minilm"]

    smoke.write_bytes(first[: len(first) // 2])  # damaged: its record cannot be read
    manifest["stages"]["rerank"]["key"] = "stale"  # so that the stage runs again
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(both) == 0
    assert scored == ["minilm-smoke", "bi:minilm", "minilm-smoke"]
    again, before = pq.read_table(smoke), pq.read_table(io.BytesIO(first))
    assert again.select(["qid", "pid", "rank"]).equals(before.select(["qid", "pid", "rank"]))
    assert np.allclose(again["score"].to_numpy(), before["score"].to_numpy(), atol=1e-5)
    assert json.loads((out / "metrics.json").read_text()) == metrics

    capsys.readouterr()
    assert main([*base, "--reranker", "bi:minilm"]) == 0
    assert scored == ["minilm-smoke", "bi:minilm", "minilm-smoke"]  # kept, nothing scored
    assert sorted(p.name for p in (out / "rerank").iterdir()) == ["bi_minilm.parquet"]
    said = capsys.readouterr().err
    assert f"removed {smoke}: its reranker is not among --reranker now" in said  # even with -q
    assert list(json.loads((out / "metrics.json").read_text())) == ["retrieval", "bi:minilm"]
