"""A user's mistake with run directories and output folders is refused in one line that names
the path, with exit status 2 and no traceback, before anything is written."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from rerank_ray.cli import build_parser, config_from_args, main
from rerank_ray.config import RunConfig


def _one_line(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("rerank-ray: error: "), error
    return error.removeprefix("rerank-ray: error: ")


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    """A run of every stage on three passages and two queries: BM25, then bi:minilm."""
    root = tmp_path_factory.mktemp("finished")
    (root / "collection.tsv").write_text("1\tred apples\n2\tgreen pears\n3\tblue sky\n")
    (root / "queries.tsv").write_text("10\tapples\n11\tthe sky\n")
    (root / "qrels.tsv").write_text("10\t0\t1\t1\n11\t0\t3\t1\n")
    code = main(
        ["run", "--corpus", str(root / "collection.tsv"), "--queries", str(root / "queries.tsv"),
         "--qrels", str(root / "qrels.tsv"), "--retriever", "bm25", "--reranker", "bi:minilm",
         "--top-k", "3", "--no-cache", "--out", str(root / "run"), "-q"]
    )  # fmt: skip
    assert code == 0
    return root / "run"


@pytest.fixture
def run_dir(finished_run, tmp_path):
    """A copy of the finished run to spoil."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.mark.parametrize("command", ["export", "compare"])
@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/x"])
def test_an_out_folder_that_is_a_file_is_refused(command, out, run_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine\n")
    target = str(tmp_path / out)
    runs = [str(run_dir)] if command == "export" else [str(run_dir), str(run_dir)]
    assert main([command, *runs, "--out", target]) == 2
    why = "exists and is not a directory" if out == "notes.txt" else "is not a directory"
    expected = why if out == "notes.txt" else f"{tmp_path / 'notes.txt'} {why}"
    assert _one_line(capsys) == f"--out {target}: {expected}"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("spoiled", ["retrieval.parquet", "rerank/bi_minilm.parquet"])
@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_a_run_file_that_is_not_parquet_is_named(command, spoiled, run_dir, capsys):
    (run_dir / spoiled).write_text("garbage\n")
    for name in ("metrics.json", "report.md"):
        (run_dir / name).unlink()
    args = ["evaluate", "--run", str(run_dir), "-q"] if command == "evaluate" else ["export"]
    assert main(args if command == "evaluate" else [*args, str(run_dir)]) == 2
    assert _one_line(capsys).startswith(f"{run_dir / spoiled}: not a readable Parquet file (")
    assert not list(run_dir.rglob("*.trec"))  # an export writes nothing unless it all reads
    assert not (run_dir / "metrics.json").exists()


def test_the_rerank_stage_scores_an_unreadable_rerank_file_again(run_dir, capsys):
    scores = run_dir / "rerank" / "bi_minilm.parquet"
    scores.write_text("garbage\n")
    assert main(["rerank", "--run", str(run_dir), "-q"]) == 0
    assert pq.read_table(scores).num_rows == 2 * 3
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert not manifest["stages"]["rerank"]["systems"]["bi:minilm"].get("reused")


@pytest.mark.parametrize("command", ["evaluate", "rerank", "retrieve", "embed"])
@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_stage_command_on_a_folder_that_is_no_run_is_refused_untouched(
    command, folder, tmp_path, capsys
):
    target = tmp_path / "runs" / "typo"
    if folder == "empty":
        target.mkdir(parents=True)
    assert main([command, "--run", str(target)]) == 2
    assert _one_line(capsys) == (
        f"{target}: not a run directory (no manifest.json); `rerank-ray run --out {target} ...`"
        " creates one"
    )
    assert (list(target.iterdir()) == []) if folder == "empty" else not target.exists()


def test_the_embed_command_with_a_data_source_starts_a_run(tmp_path):
    args = ["embed", "--out", str(tmp_path / "new"), "--dataset", "dev.jsonl"]
    config = config_from_args(build_parser().parse_args(args))
    assert config.out == str(tmp_path / "new") and config.data.dataset == "dev.jsonl"


def test_a_refusal_for_missing_prepared_data_names_the_command_that_prepares_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"config": RunConfig(out=str(run)).to_dict(), "stages": {}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "candidates.trec").write_text("10 Q0 1 1 2.0 tag\n")

    candidates = str(tmp_path / "candidates.trec")
    assert main(["retrieve", "--run", str(run), "--candidates", candidates]) == 2
    assert _one_line(capsys) == (
        f"{run}: the prepare stage's output is missing or was computed with other inputs or"
        " options; run `rerank-ray embed` first (`rerank-ray run` redoes what changed)"
    )
    assert main(["retrieve", "--run", str(run), "--retriever", "bm25"]) == 2
    assert _one_line(capsys) == f"{run}: no prepared data; run `rerank-ray embed` first"


@pytest.mark.parametrize("command", ["export", "compare"])
def test_an_out_folder_never_loses_a_file_it_did_not_write_there(
    command, finished_run, run_dir, tmp_path, capsys
):
    """Another run's directory is refused; a user's file of the same name is kept; the same
    command's own earlier output is replaced."""
    runs = [str(run_dir)] if command == "export" else [str(run_dir), str(run_dir)]
    name = "retrieval.trec" if command == "export" else "compare.md"
    assert main([command, *runs, "--out", str(finished_run)]) == 2
    assert _one_line(capsys) == (
        f"--out {finished_run}: a run directory; give the output a folder of its own"
    )
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / name).write_text("precious\n")
    assert main([command, *runs, "--out", str(mine)]) == 2
    assert _one_line(capsys).startswith(f"--out {mine}: {name} exists and was not written there")
    assert (mine / name).read_text() == "precious\n"
    ours = tmp_path / "ours"
    assert main([command, *runs, "--out", str(ours)]) == 0
    first = (ours / name).read_bytes()
    assert main([command, *runs, "--out", str(ours)]) == 0  # its own output: replaced
    assert (ours / name).read_bytes() == first
    if command == "export":  # another run's export into the same folder is refused
        other = tmp_path / "other"
        shutil.copytree(finished_run, other)
        assert main([command, str(other), "--out", str(ours)]) == 2
        assert "exists and was not written there by the export of" in _one_line(capsys)
