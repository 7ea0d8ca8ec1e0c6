"""Options are declared once: the parser, the config paths, submit's path flags, the job
scripts and the flags shown in errors all come from the config dataclasses and the stage table."""

from __future__ import annotations

import dataclasses
import pickle
import runpy
import sys
from pathlib import Path

import pytest

from rerank_ray.cli import build_parser, config_from_args, main
from rerank_ray.config import ComputeConfig, RunConfig
from rerank_ray.datasets import DataConfig
from rerank_ray.errors import ConfigError
from rerank_ray.options import flag_of, path_flags, walk
from rerank_ray.stages import COMMANDS, STAGES

REPO = Path(__file__).resolve().parents[1]

#: The command line's options as users know them (README, docs/cluster.md): a rename or a
#: lost declaration changes the interface and must fail here.
FLAGS = {
    "--dataset": "data.dataset", "--split": "data.split", "--corpus-rows": "data.corpus_rows",
    "--num-queries": "data.num_queries", "--corpus": "data.corpus", "--queries": "data.queries",
    "--qrels": "data.qrels", "--beir": "data.beir", "--embedder": "embedder",
    "--pooling": "embedding.pooling",
    "--query-max-length": "embedding.query_max_length",
    "--passage-max-length": "embedding.passage_max_length",
    "--query-instruction": "embedding.query_instruction", "--no-normalize": "embedding.normalize",
    "--batch-size": "embedding.batch_size",
    "--max-tokens-per-batch": "embedding.max_tokens_per_batch",
    "--embedding-storage": "embedding.storage", "--reranker": "rerank.models",
    "--rerank-top-k": "rerank.top_k", "--reranker-max-length": "rerank.max_length",
    "--reranker-batch-size": "rerank.batch_size", "--rerank-depths": "rerank.depths",
    "--top-k": "top_k", "--out": "out", "--baseline": "baseline", "--candidates": "candidates",
    "--retriever": "retriever", "--metrics": "metrics", "--bm25-k1": "bm25.k1", "--bm25-b": "bm25.b", "--rrf-k": "bm25.rrf_k",
    "--address": "compute.address", "--device": "compute.device",
    "--num-actors": "compute.num_actors", "--max-actors": "compute.max_actors",
    "--num-gpus-per-actor": "compute.num_gpus_per_actor",
    "--rows-per-call": "compute.rows_per_call", "--corpus-embeddings": "corpus_embeddings",
    "--query-embeddings": "query_embeddings", "--cache-dir": "cache_dir", "--no-cache": "use_cache",
}  # fmt: skip


def _get(config, path: str):
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _other_value(path: str, spec):
    """A valid value different from the default, and how it is typed on the command line."""
    default = _get(RunConfig(out="x"), path) if path != "out" else None
    if isinstance(default, bool):
        return not default, []
    if spec.choices:
        value = next(c for c in spec.choices if c != default and c != "cuda")
        return value, [value]
    if spec.type is int:
        return 3, ["3"]
    if path == "rerank.depths":
        return (2, 5), ["5,2"]
    if path == "rerank.models":  # repeated: every value, in order
        return ("a/first", "second"), ["a/first", "--reranker", "second"]
    if path == "baseline":  # a system of the default reranker's run
        return "bge-reranker-large", ["bge-reranker-large"]
    if path == "metrics":
        return ("ndcg@10", "map@100"), ["nDCG@10,AP@100"]
    if spec.type is float:
        return 0.5, ["0.5"]
    if path == "cache_dir":  # recorded absolute
        return "/somewhere", ["/somewhere"]
    return "somewhere", ["somewhere"]


def test_every_flag_sets_its_config_path_and_nothing_else(tmp_path):
    declared = {spec.flag: path for path, spec in walk(RunConfig)}
    assert declared == FLAGS
    baseline = config_from_args(build_parser().parse_args(["run", "--out", str(tmp_path)]))
    assert baseline == RunConfig(out=str(tmp_path))  # nothing typed: every default
    for path, spec in walk(RunConfig):
        if path == "out":
            continue
        value, typed = _other_value(path, spec)
        args = build_parser().parse_args(["run", "--out", str(tmp_path), spec.flag, *typed])
        config = config_from_args(args)
        assert _get(config, path) == value, spec.flag
        changed = [p for p, _ in walk(RunConfig) if _get(config, p) != _get(baseline, p)]
        assert changed == [path], (spec.flag, changed)


def test_run_is_an_alias_of_out_and_help_shows_defaults(tmp_path, capsys):
    import json

    manifest = {"config": RunConfig(out=str(tmp_path)).to_dict(), "stages": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    args = build_parser().parse_args(["evaluate", "--run", str(tmp_path)])
    assert config_from_args(args).out == str(tmp_path)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--batch-size N most texts per forward pass (default: 64)" in shown
    assert "--rows-per-call N rows per actor call (default: 4096)" in shown


def test_path_flags_are_the_options_that_name_files_or_models():
    assert path_flags(RunConfig) == {
        "--dataset", "--corpus", "--queries", "--qrels", "--beir", "--out", "--run",
        "--corpus-embeddings", "--query-embeddings", "--cache-dir", "--embedder", "--reranker",
        "--candidates",
    }  # fmt: skip


def test_errors_name_the_field_and_the_cli_shows_the_flag(tmp_path):
    with pytest.raises(ConfigError) as caught:
        ComputeConfig(num_actors=2, max_actors=3)
    error = caught.value
    assert str(error) == (
        "num_actors (a fixed pool) and max_actors (an autoscaling pool) exclude each other"
    )
    assert error.shown_to_cli() == (
        "--num-actors (a fixed pool) and --max-actors (an autoscaling pool) exclude each other"
    )
    # Raised in a Ray task, the error crosses a pickle: the fields it names travel with it.
    assert pickle.loads(pickle.dumps(error)).shown_to_cli() == error.shown_to_cli()
    # A field's name inside a path the message quotes stays as it is.
    where = ConfigError(
        "runs/corpus_rows/x.jsonl: corpus_rows 9 too many", DataConfig, "corpus_rows"
    )
    assert where.shown_to_cli() == "runs/corpus_rows/x.jsonl: --corpus-rows 9 too many"
    assert flag_of(DataConfig, "not_an_option") == "not_an_option"


def test_cli_prints_flags_in_one_line(tmp_path, capsys):
    code = main(["run", "--out", str(tmp_path / "r"), "--dataset", "d.jsonl", "--qrels", "q.txt"])
    assert code == 2
    assert capsys.readouterr().err == (
        "rerank-ray: error: --queries and --qrels come from --dataset's positives;"
        " give one layout\n"
    )


def test_one_stage_table_drives_commands_and_job_scripts(monkeypatch):
    assert COMMANDS["run"].stages == STAGES
    assert set(STAGES) == {stage for c in COMMANDS.values() for stage in c.stages}
    assert sorted(p.name for p in (REPO / "jobs").glob("*.py")) == sorted(
        Path(c.entrypoint).name for c in COMMANDS.values()
    )
    seen = {}

    def fake_main(argv):
        seen["argv"] = argv
        return 0

    monkeypatch.setattr("rerank_ray.cli.main", fake_main)
    for command in COMMANDS.values():
        monkeypatch.setattr(sys, "argv", [command.entrypoint, "--out", "x"])
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(REPO / command.entrypoint), run_name="__main__")
        assert done.value.code == 0 and seen["argv"] == [command.name, "--out", "x"]


def test_sections_are_config_dataclasses_and_every_option_has_help():
    for path, spec in walk(RunConfig):
        assert spec.help and spec.flag.startswith("--"), path
    sections = [f.name for f in dataclasses.fields(RunConfig) if "option" not in f.metadata]
    assert sections == ["data", "embedding", "rerank", "bm25", "compute"]


def test_a_stage_command_keeps_the_runs_options_but_not_its_cluster(tmp_path):
    """A later command on the run directory joins the cluster it names, or none: a cluster
    used before may be gone, or be someone else's by now."""
    import json

    stored = RunConfig(
        out=str(tmp_path), top_k=7, compute=ComputeConfig(address="10.0.0.1:6379", device="cpu")
    )
    (tmp_path / "manifest.json").write_text(json.dumps({"config": stored.to_dict(), "stages": {}}))
    config = config_from_args(build_parser().parse_args(["retrieve", "--run", str(tmp_path)]))
    assert config.top_k == 7 and config.compute.device == "cpu"
    assert config.compute.address is None
    again = ["retrieve", "--run", str(tmp_path), "--address", "auto"]
    assert config_from_args(build_parser().parse_args(again)).compute.address == "auto"


def test_inputs_are_recorded_absolute_so_another_working_directory_reads_the_same_files(
    tmp_path, monkeypatch
):
    """A relative input resolved against a later command's working directory would silently
    prepare the run from other files."""
    here = tmp_path / "here"
    (here / "models" / "enc").mkdir(parents=True)
    for name in ("corpus.tsv", "queries.tsv", "qrels.tsv", "cand.trec"):
        (here / name).write_text("x\n")
    (here / "minilm").mkdir()  # a folder named like an alias: the alias still wins
    monkeypatch.chdir(here)
    args = build_parser().parse_args(
        ["run", "--out", "runs/a", "--corpus", "corpus.tsv", "--queries", "./queries.tsv",
         "--qrels", "qrels.tsv", "--embedder", "minilm",
         "--reranker", "./models/enc", "--reranker", "minilm-smoke",
         "--query-embeddings", "s3://bucket/q", "--corpus-embeddings", "missing.parquet"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.data.corpus == str(here / "corpus.tsv")
    assert config.data.queries == str(here / "queries.tsv")
    assert config.data.qrels == str(here / "qrels.tsv")
    assert config.rerank.models == (str(here / "models" / "enc"), "minilm-smoke")
    assert config.embedder == "minilm"
    assert config.query_embeddings == "s3://bucket/q"  # a URI as given
    assert config.corpus_embeddings == "missing.parquet"  # not here: refused later, as given
    assert config.out == "runs/a"  # found again by what the later command names
    cached = ["run", "--out", "runs/c", "--dataset", "d.jsonl", "--cache-dir", "cache"]
    assert config_from_args(build_parser().parse_args(cached)).cache_dir == str(here / "cache")
    with_candidates = ["run", "--out", "runs/b", "--candidates", "cand.trec"]
    config = config_from_args(build_parser().parse_args(with_candidates))
    assert config.candidates == str(here / "cand.trec")


@pytest.mark.parametrize(
    "flag, typed, reason",
    [
        ("--metrics", "ndcg", "unknown metric 'ndcg' (use recall@k, mrr@k, ndcg@k, p@k, map@k,"),
        ("--rerank-depths", "abc", "'abc' is not a comma-separated list of depths (whole numbers,"),
    ],
)
def test_a_value_an_option_cannot_take_is_refused_with_what_it_accepts(flag, typed, reason, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["evaluate", "--run", "r", flag, typed])
    assert done.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"rerank-ray evaluate: error: argument {flag}: {reason}")


@pytest.mark.parametrize(
    "flag, typed, reason",
    [
        ("--bm25-k1", "nan", "--bm25-k1 must be a finite number of at least 0, got nan"),
        ("--bm25-k1", "inf", "--bm25-k1 must be a finite number of at least 0, got inf"),
        ("--num-gpus-per-actor", "nan", "--num-gpus-per-actor must be a finite number"),
    ],
)
def test_numbers_that_are_not_finite_are_refused(flag, typed, reason, tmp_path, capsys):
    """nan compares false with every bound: BM25 with k1 = nan scored every passage 0."""
    args = ["run", "--out", str(tmp_path / "r"), "--dataset", "x.jsonl", flag, typed]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and reason in error
