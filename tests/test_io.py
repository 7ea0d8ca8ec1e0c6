"""Files through pyarrow filesystems: the same calls on a local disk and on S3 (moto)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from rerank_ray.io import (
    atomic_path,
    copy_tree,
    discard,
    exists,
    is_dir,
    join,
    makedirs,
    publish,
    read_json,
    temporary_sibling,
    write_json,
)
from rerank_ray.parquet import (
    iter_parquet_batches,
    parquet_files,
    parquet_rows,
    read_table,
    write_table,
)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh directory: a local one, or a new bucket on the test S3 endpoint."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_bucket") + "/runs"


def _part(directory: str, name: str, values: list[int]) -> None:
    write_table(pa.table({"x": pa.array(values, pa.int64())}), join(directory, name))


def test_a_published_directory_replaces_the_old_one_whole(root):
    final = join(root, "embeddings")
    makedirs(final)
    _part(final, "part-0.parquet", [1, 2])
    _part(final, "part-1.parquet", [3])
    with atomic_path(final) as tmp:
        makedirs(tmp)
        _part(tmp, "part-0.parquet", [7, 8, 9])
        assert read_table(final).column("x").to_pylist() == [1, 2, 3]  # not yet replaced
    assert parquet_files(final) == [join(final, "part-0.parquet")]  # the old part-1 is gone
    assert parquet_rows(final) == 3
    assert read_table(final).column("x").to_pylist() == [7, 8, 9]
    assert [b.num_rows for b in iter_parquet_batches(final, batch_size=2)] == [2, 1]
    assert not [p for p in _listing(root) if ".tmp-" in p]


def test_a_failed_write_leaves_neither_output_nor_staging(root):
    final = join(root, "retrieval.parquet")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        _part(root, tmp.rsplit("/", 1)[-1], [1])
        raise RuntimeError("killed")
    assert not exists(final)
    assert not [p for p in _listing(root) if ".tmp-" in p]


def test_json_files_and_hidden_files(root):
    write_json(join(root, "manifest.json"), {"stages": {"embed": {"rows": 3}}})
    assert read_json(join(root, "manifest.json")) == {"stages": {"embed": {"rows": 3}}}
    table_dir = join(root, "table")
    makedirs(table_dir)
    _part(table_dir, "b.parquet", [2])
    _part(table_dir, "a.parquet", [1])
    _part(table_dir, "_SUCCESS.parquet", [0])  # hidden to Arrow and Ray Data: not listed
    _part(table_dir, ".x.parquet", [0])
    assert parquet_files(table_dir) == [join(table_dir, "a.parquet"), join(table_dir, "b.parquet")]
    assert is_dir(table_dir) and not is_dir(join(table_dir, "a.parquet"))
    discard(table_dir)
    assert not exists(table_dir)
    discard(table_dir)  # gone already: no error


def test_copy_tree_between_local_disk_and_s3(root, tmp_path):
    local = tmp_path / "source"
    local.mkdir()
    _part(str(local), "part-0.parquet", [4, 5])
    _part(str(local), ".hidden.parquet", [0])
    target = join(root, "copied")
    copy_tree(str(local), target)
    back = str(tmp_path / "back")
    copy_tree(target, back)
    assert parquet_files(back) == [join(back, "part-0.parquet")]
    assert read_table(back).column("x").to_pylist() == [4, 5]


def test_a_file_is_moved_into_place(root):
    final = join(root, "report.md")
    tmp = temporary_sibling(final)
    _part(root, tmp.rsplit("/", 1)[-1], [1])
    publish(tmp, final)
    assert exists(final) and not exists(tmp)


def _listing(root: str) -> list[str]:
    from rerank_ray.io import resolve

    filesystem, inner = resolve(root)
    return [i.path for i in filesystem.get_file_info(pafs.FileSelector(inner, recursive=True))]


def test_ray_reads_a_table_in_read_tasks_of_the_chosen_size(ray_session, tmp_path, monkeypatch):
    from rerank_ray import parquet

    for name in ("a.parquet", "b.parquet", "c.parquet"):
        _part(str(tmp_path), name, list(range(100)))
    monkeypatch.delenv(parquet._BIN_PACKING_VARIABLE, raising=False)
    assert parquet.read_dataset(str(tmp_path)).materialize().num_blocks() == 1  # 1 MiB: one task
    monkeypatch.setattr(parquet, "READ_TASK_BYTES", 1)
    dataset = parquet.read_dataset(str(tmp_path)).materialize()
    assert dataset.num_blocks() == 3 and dataset.count() == 300  # one task per file
    assert parquet._BIN_PACKING_VARIABLE not in os.environ  # set for the call only
    monkeypatch.setenv(parquet._BIN_PACKING_VARIABLE, str(1 << 30))  # the user's value wins
    assert parquet.read_dataset(str(tmp_path)).materialize().num_blocks() == 1


def test_ray_reads_a_small_table_with_one_footer_reader(ray_session, tmp_path, monkeypatch):
    """Ray 2.60 would start 32 footer-reading actors (each a worker process) per read."""
    from ray.data._internal.datasource_v2.formats.parquet import footer_file_indexer

    from rerank_ray import parquet

    seen = []
    original = footer_file_indexer.FooterFileIndexer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self._num_actors)

    monkeypatch.setattr(footer_file_indexer.FooterFileIndexer, "__init__", spy)
    monkeypatch.delenv(parquet._FOOTER_ACTORS_VARIABLE, raising=False)
    for name in ("a.parquet", "b.parquet"):
        _part(str(tmp_path), name, list(range(10)))
    assert parquet.read_dataset(str(tmp_path)).count() == 20
    assert seen and set(seen) == {1}
    assert parquet._FOOTER_ACTORS_VARIABLE not in os.environ  # set for the call only
    monkeypatch.setattr(parquet, "FILES_PER_FOOTER_ACTOR", 1)
    seen.clear()
    assert parquet.read_dataset(str(tmp_path)).count() == 20
    assert set(seen) == {2}
    monkeypatch.setenv(parquet._FOOTER_ACTORS_VARIABLE, "3")  # the user's value wins
    seen.clear()
    assert parquet.read_dataset(str(tmp_path)).count() == 20
    assert set(seen) == {3}
