"""Loaders on each format, on the real ../shared data, and on each kind of bad input."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray import corpus_check, formats, parquet
from rerank_ray.corpus_check import check_corpus
from rerank_ray.datasets import DataConfig, prepare_data
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.formats import passage_id
from rerank_ray.tables import read_qrels

# A separate corpus table is checked on Ray Data (check_corpus): one Ray for the session.
pytestmark = pytest.mark.usefixtures("ray_session")

ROWS = [
    {"query": "q zero", "positive": ["passage A"]},
    {"query": "q one", "positive": ["passage B", "passage C"]},
    {"query": "q two", "positive": ["passage A"]},  # A again: one corpus entry
    {"query": "q three", "positive": ["passage D"]},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _tables(prepared):
    return (
        pq.read_table(prepared.corpus_path).to_pylist(),
        pq.read_table(prepared.queries_path).to_pylist(),
        read_qrels(prepared.qrels_path),
    )


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_namespace_pt_schema_in_each_local_format(tmp_path, fmt):
    source = tmp_path / f"dev.{fmt}"
    if fmt == "jsonl":
        _write_jsonl(source, ROWS)
    elif fmt == "json":
        source.write_text(json.dumps(ROWS), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), source)
    prepared = prepare_data(
        DataConfig(dataset=str(source), corpus_rows=3, num_queries=2), tmp_path / "out"
    )
    corpus, queries, qrels = _tables(prepared)
    assert [r["text"] for r in corpus] == ["passage A", "passage B", "passage C"]
    assert [r["pid"] for r in corpus] == [
        passage_id(t) for t in ("passage A", "passage B", "passage C")
    ]
    assert queries == [{"qid": "0", "text": "q zero"}, {"qid": "1", "text": "q one"}]
    assert qrels == {
        "0": {passage_id("passage A"): 1},
        "1": {passage_id("passage B"): 1, passage_id("passage C"): 1},
    }
    assert (prepared.num_corpus, prepared.num_queries, prepared.num_qrels) == (3, 2, 3)
    assert pq.read_schema(prepared.qrels_path).field("relevance").type == pa.int32()


def test_a_hub_name_is_streamed_from_the_hub(tmp_path, monkeypatch):
    """``namespace-Pt/msmarco`` (a slash, no such local path) goes to ``datasets``, streamed
    with the split asked for, and gives the tables a local file with the same rows gives."""
    import datasets as hf_datasets

    calls = []

    def load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        return iter(ROWS)

    monkeypatch.setattr(hf_datasets, "load_dataset", load_dataset)
    config = DataConfig(dataset="namespace-Pt/msmarco", corpus_rows=3, num_queries=2)
    from_hub = prepare_data(config, tmp_path / "hub")
    assert calls == [("namespace-Pt/msmarco", "dev", True)]
    local = DataConfig(
        dataset=_write_jsonl(tmp_path / "dev.jsonl", ROWS), corpus_rows=3, num_queries=2
    )
    assert _tables(from_hub) == _tables(prepare_data(local, tmp_path / "local"))


def test_default_queries_are_the_corpus_rows(tmp_path):
    source = _write_jsonl(tmp_path / "dev.jsonl", ROWS)
    prepared = prepare_data(DataConfig(dataset=source), tmp_path / "out")
    assert (prepared.num_corpus, prepared.num_queries, prepared.num_qrels) == (4, 4, 5)


def test_seed_protocol_on_the_real_dev_set(msmarco, tmp_path):
    config = DataConfig(dataset=str(msmarco / "dev.jsonl"), corpus_rows=5000, num_queries=100)
    prepared = prepare_data(config, tmp_path)
    assert (prepared.num_corpus, prepared.num_queries, prepared.num_qrels) == (5000, 100, 100)
    everything = prepare_data(DataConfig(dataset=str(msmarco / "dev.jsonl")), tmp_path / "all")
    # ../shared/README.md: two passages are positives of two queries each.
    assert (everything.num_corpus, everything.num_queries) == (6978, 6980)


def test_official_tsv_layout_on_the_real_files(msmarco, tmp_path):
    config = DataConfig(
        corpus=str(msmarco / "collection.tsv"),
        queries=str(msmarco / "queries.tsv"),
        qrels=str(msmarco / "qrels.tsv"),
    )
    prepared = prepare_data(config, tmp_path)
    assert (prepared.num_corpus, prepared.num_queries) == (6588, 6590)
    with open(msmarco / "qrels.tsv") as handle:
        first = handle.readline().split()
        lines = 1 + sum(1 for _ in handle)
    assert prepared.num_qrels == lines
    assert read_qrels(prepared.qrels_path)[first[0]] == {first[2]: int(first[3])}


def _tsv_files(tmp_path, collection, queries, qrels):
    paths = []
    for name, text in (
        ("collection.tsv", collection),
        ("queries.tsv", queries),
        ("qrels.tsv", qrels),
    ):
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        paths.append(str(path))
    return DataConfig(corpus=paths[0], queries=paths[1], qrels=paths[2])


def test_graded_qrels_and_duplicate_identical_rows(tmp_path):
    config = _tsv_files(
        tmp_path,
        "1\tfirst passage\n2\tsecond passage\n2\tsecond passage\n",
        "10\tquery ten\n",
        "10 0 1 2\n10\t0\t2\t1\n10 0 1 2\n",
    )
    prepared = prepare_data(config, tmp_path / "out")
    corpus, _, qrels = _tables(prepared)
    assert [r["pid"] for r in corpus] == ["1", "2"]
    assert qrels == {"10": {"1": 2, "2": 1}}
    # the repeated judgement is one row of the table, counted once
    assert prepared.num_qrels == 2
    assert pq.read_table(prepared.qrels_path).to_pylist() == [
        {"qid": "10", "pid": "1", "relevance": 2},
        {"qid": "10", "pid": "2", "relevance": 1},
    ]


def test_exact_duplicate_rows_leave_the_same_table_as_no_duplicates(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "rep").mkdir()
    clean = prepare_data(
        _tsv_files(tmp_path / "clean", "1\ta\n2\tb\n3\tc\n", "10\tq\n", "10 0 2 1\n"),
        tmp_path / "clean-out",
    )
    repeated = prepare_data(
        _tsv_files(tmp_path / "rep", "1\ta\n2\tb\n1\ta\n3\tc\n2\tb\n", "10\tq\n", "10 0 2 1\n"),
        tmp_path / "rep-out",
    )
    assert repeated.num_corpus == clean.num_corpus == 3
    assert repeated.corpus_hash == clean.corpus_hash  # the rows kept, in order
    assert _tables(repeated) == _tables(clean)


def test_check_corpus_equals_a_brute_force_scan_across_blocks(tmp_path, monkeypatch):
    # 3,000 rows in 10 files, read one file a task and sorted into 10 blocks: repeats,
    # conflicts and matches must not depend on which block a row lands in.
    monkeypatch.setattr(parquet, "READ_TASK_BYTES", 1)
    rows = [(f"p{i % 2900}", f"text {i % 2900}") for i in range(3000)]  # 100 exact repeats
    rows[2950] = ("p50", "another text")  # p50 conflicts
    rows[10] = ("p10", "  text 7 ")  # p10's text is text 7 once stripped
    folder = tmp_path / "corpus"
    folder.mkdir()
    for part in range(10):
        chunk = rows[part * 300 : (part + 1) * 300]
        pq.write_table(
            pa.table({"pid": [p for p, _ in chunk], "text": [t for _, t in chunk]}),
            folder / f"part-{part:02d}.parquet",
        )
    wanted = ["text 7", "text 2899", "absent"]
    check = check_corpus(str(folder), len(rows), wanted, "text")

    texts_by_pid: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for pid, text in rows:
        texts_by_pid.setdefault(pid, set()).add(text)
        counts[pid] = counts.get(pid, 0) + 1
    assert check.conflicting == {p for p, t in texts_by_pid.items() if len(t) > 1}
    assert check.conflicting == {"p10", "p50"}
    assert check.repeated == {p for p in counts if counts[p] > 1} - check.conflicting
    assert len(check.repeated) == 98
    expected = {i: sorted({p for p, t in rows if t.strip() == w}) for i, w in enumerate(wanted)}
    assert check.matches == {i: pids for i, pids in expected.items() if pids}
    assert check.matches == {0: ["p10", "p7"], 1: ["p2899"]}

    by_pid = check_corpus(str(folder), len(rows), ["p5", "p2899", "nope"], "pid")
    assert by_pid.matches == {0: ["p5"], 1: ["p2899"]}
    assert by_pid.conflicting == check.conflicting and by_pid.repeated == check.repeated


def test_a_pid_that_goes_on_in_the_next_sorted_block_is_still_seen_twice():
    # Sorted blocks may split a run of one pid; each block keeps its first and last rows.
    first = pa.table({"pid": ["a", "b", "c"], "digest": [1, 2, 3], "wanted": [-1, -1, -1]})
    second = pa.table(
        {"pid": ["c", "d", "e", "e"], "digest": [3, 4, 5, 6], "wanted": [-1, 0, -1, -1]}
    )
    kept = [corpus_check._rows_of_interest(block).to_pylist() for block in (first, second)]
    assert [r["pid"] for r in kept[0]] == ["a", "c"]  # the edges
    assert [r["pid"] for r in kept[1]] == ["c", "d", "e", "e"]  # edge, wanted, a run
    conflicting, repeated, matches = set(), set(), {}
    for pid in "acde":
        group = [r for block in kept for r in block if r["pid"] == pid]
        corpus_check._settle(group, conflicting, repeated, matches)
    assert (conflicting, repeated, matches) == ({"e"}, {"c"}, {0: ["d"]})


def test_a_positive_shared_by_two_passages_makes_both_relevant(tmp_path):
    source = _write_jsonl(tmp_path / "dev.jsonl", ROWS[:1])
    corpus = _write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"pid": "1", "text": "passage A"},
            {"pid": "2", "text": "other"},
            {"pid": "3", "text": "passage A "},
        ],
    )
    prepared = prepare_data(
        DataConfig(dataset=source, corpus=corpus, num_queries=1), tmp_path / "out"
    )
    assert _tables(prepared)[2] == {"0": {"1": 1, "3": 1}}


def test_a_corpus_table_without_ids_gets_content_hash_ids(tmp_path):
    # e.g. a corpus with only a `content` column
    source = _write_jsonl(tmp_path / "dev.jsonl", ROWS[:2])
    texts = ["noise", "passage C", "passage B", "passage A", "passage A"]
    corpus = _write_jsonl(tmp_path / "corpus.jsonl", [{"content": t} for t in texts])
    prepared = prepare_data(
        DataConfig(dataset=source, corpus=corpus, num_queries=2), tmp_path / "out"
    )
    corpus_rows, _, qrels = _tables(prepared)
    assert [r["pid"] for r in corpus_rows] == [passage_id(t) for t in texts[:4]]
    assert qrels == {
        "0": {passage_id("passage A"): 1},
        "1": {passage_id("passage B"): 1, passage_id("passage C"): 1},
    }


def test_corpus_table_with_dataset_matches_positives_by_text(tmp_path):
    source = _write_jsonl(tmp_path / "dev.jsonl", ROWS)
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["7", "8", "9", "10", "11"],
                "content": ["noise", "passage B", "passage A", "passage C", "passage D"],
            }
        ),
        corpus,
    )
    prepared = prepare_data(
        DataConfig(dataset=source, corpus=str(corpus), num_queries=2), tmp_path / "out"
    )
    corpus_rows, queries, qrels = _tables(prepared)
    assert len(corpus_rows) == 5 and len(queries) == 2
    assert qrels == {"0": {"9": 1}, "1": {"8": 1, "10": 1}}


BAD_TSV = [
    # (collection, queries, qrels, expected message fragment)
    ("1\tp\n", "10\tq\n", "10 0 1\n", "qrels.tsv, line 1: expected 4 fields"),
    ("1\tp\n", "10\tq\n", "10 0 1 x\n", "qrels.tsv, line 1: relevance 'x' is not an integer"),
    ("1\tp\n", "10\tq\n", "10 0 1 1\n11 0 1 1\n", "qrels.tsv, line 2: qid 11 is not in"),
    ("1\tp\n", "10\tq\n", "10 0 1 1\n10 0 5 1\n", "qrels.tsv, line 2: pid 5 is not in"),
    (
        "1\tp\n1\tother\n",
        "10\tq\n",
        "10 0 1 1\n",
        "collection.tsv, line 2: pid 1 appears twice with different texts",
    ),
    (
        "1\tp\nno tab here\n",
        "10\tq\n",
        "10 0 1 1\n",
        "collection.tsv, line 2: expected 2 tab-separated fields",
    ),
    ("1\tp\n", "10\tq\n10\tagain\n", "10 0 1 1\n", "queries.tsv, line 2: qid 10 appears twice"),
    ("1\tp\n", "10\tq\n", "", "qrels.tsv: file is empty"),
    (
        "1\tp\n2\tr\n",
        "10\tq\n11\tq\n",
        "10 0 1 0\n11 0 2 0\n10 0 2 -1\n",
        "qrels.tsv: no query has a relevant passage (grade > 0)",
    ),
    ("", "10\tq\n", "10 0 1 1\n", "collection.tsv: file is empty"),
    (b"1\tcaf\xe9\n", "10\tq\n", "10 0 1 1\n", "collection.tsv, line 1: not valid UTF-8"),
    (
        "1\tp\n2\tr\n",
        "10\tq\n11\tq\n",
        "10 0 1 1\n11 0 1 0\n10 0 2 1\n10 0 1 1\n\n10 0 1 2\n",
        "qrels.tsv, line 6: qid 10, pid 1 judged 2 here but 1 on line 1",
    ),
]


CLEAN_TSV = (
    "1\tfirst passage\n2\tsecond passage\n3\tthird passage\n",
    "10\tquery ten\n11\tquery eleven\n",
    "10 0 1 2\n10 0 2 0\n11 0 3 1\n",
)


def _dirty(text: str, defect: str) -> bytes:
    """``text`` with a byte-order mark, CRLF line ends, or blank lines (one between rows and
    one at the end, each in both line-end styles), or all three."""
    if defect in ("blank", "all"):
        rows = text.splitlines(keepends=True)
        text = rows[0] + "\n\r\n" + "".join(rows[1:]) + "\r\n\n"
    if defect in ("crlf", "all"):
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    data = text.encode()
    return b"\xef\xbb\xbf" + data if defect in ("bom", "all") else data


def test_tsv_with_bom_crlf_and_blank_lines_gives_the_clean_tables(tmp_path):
    """A byte-order mark at the start, CRLF line ends and blank lines (a trailing one too) in
    collection, queries and qrels leave the tables the clean files give."""
    (tmp_path / "clean").mkdir()
    (tmp_path / "dirty").mkdir()
    clean = prepare_data(_tsv_files(tmp_path / "clean", *CLEAN_TSV), tmp_path / "clean-out")
    files = [_dirty(text, "all") for text in CLEAN_TSV]
    dirty = prepare_data(_tsv_files(tmp_path / "dirty", *files), tmp_path / "dirty-out")
    assert _tables(dirty) == _tables(clean)
    assert _tables(clean)[2] == {"10": {"1": 2, "2": 0}, "11": {"3": 1}}
    for name in ("num_corpus", "num_queries", "num_qrels", "corpus_hash", "queries_hash"):
        assert getattr(dirty, name) == getattr(clean, name), name


@pytest.mark.parametrize("defect", ["bom", "crlf", "blank", "all"])
def test_tsv_readers_read_past_each_defect(tmp_path, defect):
    """Each defect alone, read by the TSV and qrels readers: the clean file's rows, ids and
    texts unchanged (a BOM is not part of the first id, a CR not part of a text)."""
    collection, queries, qrels = CLEAN_TSV
    rows = {}
    for kind, text in (("clean", collection), (defect, collection)):
        path = tmp_path / f"{kind}-collection.tsv"
        path.write_bytes(text.encode() if kind == "clean" else _dirty(text, defect))
        rows[kind] = [row[1:] for row in formats.iter_tsv(str(path), ("pid", "text"))]
    assert rows[defect] == rows["clean"] == [
        ("1", "first passage"), ("2", "second passage"), ("3", "third passage")
    ]  # fmt: skip
    path = tmp_path / "queries.tsv"
    path.write_bytes(_dirty(queries, defect))
    assert [row[1] for row in formats.iter_tsv(str(path), ("qid", "text"))] == ["10", "11"]
    path = tmp_path / "qrels.tsv"
    path.write_bytes(_dirty(qrels, defect))
    assert [row[1:] for row in formats.iter_trec_qrels(str(path))] == [
        ("10", "1", 2), ("10", "2", 0), ("11", "3", 1)
    ]  # fmt: skip


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_dataset_file_with_bom_and_crlf_gives_the_clean_tables(tmp_path, fmt):
    """A byte-order mark and CRLF line ends in a ``--dataset`` JSONL or JSON file are not data."""
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
    else:
        text = json.dumps(ROWS, indent=1)
    clean = tmp_path / f"clean.{fmt}"
    clean.write_bytes(text.encode())
    dirty = tmp_path / f"dirty.{fmt}"
    dirty.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n")
    tables = [
        _tables(prepare_data(DataConfig(dataset=str(path)), tmp_path / f"out-{path.stem}"))
        for path in (clean, dirty)
    ]
    assert tables[1] == tables[0]
    assert [r["text"] for r in tables[1][1]] == [r["query"] for r in ROWS]


def test_tsv_layout_and_tables_on_s3(tmp_path, s3_bucket):
    """Sources and tables on S3: the same tables as on a local disk; a conflicting pid is
    named by its URI and line, and leaves no table there."""
    from rerank_ray.io import exists, join, write_bytes
    from rerank_ray.parquet import parquet_files, read_table

    files = {
        "collection.tsv": "1\ta\n2\tb\n1\ta\n3\tc\n2\tb\n",
        "queries.tsv": "10\tq\n",
        "qrels.tsv": "10 0 2 1\n",
    }
    for name, text in files.items():
        write_bytes(join(s3_bucket, "src", name), text.encode())
    remote = DataConfig(
        corpus=join(s3_bucket, "src", "collection.tsv"),
        queries=join(s3_bucket, "src", "queries.tsv"),
        qrels=join(s3_bucket, "src", "qrels.tsv"),
    )
    on_s3 = prepare_data(remote, join(s3_bucket, "out"))
    (tmp_path / "local").mkdir()
    local = prepare_data(_tsv_files(tmp_path / "local", *files.values()), tmp_path / "out")
    assert on_s3.corpus_path.startswith("s3://") and parquet_files(on_s3.corpus_path)
    assert on_s3.corpus_hash == local.corpus_hash
    for name in ("corpus_path", "queries_path", "qrels_path"):
        assert read_table(getattr(on_s3, name)).equals(pq.read_table(getattr(local, name)))

    write_bytes(join(s3_bucket, "src", "collection.tsv"), b"1\ta\n1\tother\n2\tb\n")
    with pytest.raises(DataError, match=r"s3://.*/src/collection.tsv, line 2: pid 1 appears twice"):
        prepare_data(remote, join(s3_bucket, "bad"))
    assert not exists(join(s3_bucket, "bad", "corpus.parquet"))
    assert not exists(join(s3_bucket, "bad", "queries.parquet"))


@pytest.mark.parametrize("collection,queries,qrels,message", BAD_TSV)
def test_bad_tsv_input_names_file_and_line_and_leaves_no_table(
    tmp_path, collection, queries, qrels, message
):
    config = _tsv_files(tmp_path, collection, queries, qrels)
    out = tmp_path / "out"
    with pytest.raises(DataError) as error:
        prepare_data(config, out)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    left = os.listdir(out) if out.exists() else []  # bad files fail before out is made
    assert not [name for name in left if name.endswith(".parquet") or name.startswith(".")]


@pytest.mark.parametrize(
    "content,message",
    [
        (
            '{"query": "q", "positive": ["a"]}\n{"query": "q2"}\n',
            "dev.jsonl, line 2: missing column 'positive'",
        ),
        (
            '{"query": "q", "positive": "a"}\n',
            "dev.jsonl, line 1: column 'positive' must be a list of strings",
        ),
        ('{"query": "q", "positive": ["a"]}\n{not json\n', "dev.jsonl, line 2: not valid JSON"),
        ("\n\n", "dev.jsonl: no records"),
    ],
)
def test_bad_dataset_rows(tmp_path, content, message):
    path = tmp_path / "dev.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        prepare_data(DataConfig(dataset=str(path)), tmp_path / "out")


@pytest.mark.parametrize("with_corpus", [False, True], ids=["positives", "corpus-table"])
def test_a_dataset_whose_queries_have_no_positive_is_refused(tmp_path, with_corpus):
    """The first rows are the queries: when none of them has a positive, no metric has a query
    to average over (later rows' positives still make a corpus)."""
    rows = [{"query": "q zero", "positive": []}, {"query": "q one", "positive": []}, *ROWS]
    source = _write_jsonl(tmp_path / "dev.jsonl", rows)
    corpus = None
    if with_corpus:
        corpus = _write_jsonl(tmp_path / "corpus.jsonl", [{"pid": "1", "text": "passage A"}])
    out = tmp_path / "out"
    with pytest.raises(DataError) as error:
        prepare_data(DataConfig(dataset=source, corpus=corpus, num_queries=2), out)
    assert str(error.value) == (
        f"{source}: no query has a relevant passage (none of its 2 queries has a positive)"
    )
    left = os.listdir(out) if out.exists() else []
    assert not [name for name in left if name.endswith(".parquet") or name.startswith(".")]
    # One query with a positive is enough.
    prepared = prepare_data(DataConfig(dataset=source, num_queries=3), tmp_path / "three")
    assert read_qrels(prepared.qrels_path) == {"2": {passage_id("passage A"): 1}}


def test_missing_file_and_impossible_combinations(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        prepare_data(DataConfig(dataset=str(tmp_path / "nope.jsonl")), tmp_path)
    with pytest.raises(ConfigError, match="missing: qrels"):
        prepare_data(DataConfig(corpus="c.tsv", queries="q.tsv"), tmp_path)
    with pytest.raises(ConfigError, match="exceeds corpus_rows"):
        prepare_data(DataConfig(dataset="d.jsonl", corpus_rows=5, num_queries=6), tmp_path)
    source = _write_jsonl(tmp_path / "dev.jsonl", ROWS)
    with pytest.raises(DataError, match="only 4 rows"):
        prepare_data(DataConfig(dataset=source, corpus_rows=10), tmp_path / "out")


def test_positive_missing_from_corpus_table(tmp_path):
    source = _write_jsonl(tmp_path / "dev.jsonl", ROWS)
    corpus = tmp_path / "corpus.jsonl"
    _write_jsonl(corpus, [{"pid": "1", "text": "passage A"}])
    with pytest.raises(DataError, match="2 of 3 positives .* are not in the corpus"):
        prepare_data(
            DataConfig(dataset=source, corpus=str(corpus), num_queries=2), tmp_path / "out"
        )
