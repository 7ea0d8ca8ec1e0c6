"""Stage keys hold what an output depends on: a model changed in place is embedded again, a
speed-only option is not (the in-process CLI on the session's Ray, no cache)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq

from rerank_ray.cli import main
from rerank_ray.embed import embedding_matrix
from rerank_ray.models import Embedder, EmbedderOptions


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
    bare = Embedder(str(model), EmbedderOptions(), device="cpu").flag_model
    expected = bare.encode_corpus([texts[p] for p in pids], convert_to_numpy=True)
    assert np.min(np.sum(after * expected, axis=1)) > 1 - 1e-5  # the new model's vectors

    # A speed-only option: every stage is up to date, the embed record is untouched.
    assert main([*command, "--batch-size", "8"]) == 0
    third = json.loads((out / "manifest.json").read_text())
    assert third["stages"]["embed"] == second["stages"]["embed"]
    assert third["stages"]["retrieve"] == second["stages"]["retrieve"]
