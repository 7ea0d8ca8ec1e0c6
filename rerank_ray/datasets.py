"""Sources → normalized Parquet tables: ``corpus``, ``queries`` and ``qrels``.

Every source is read lazily, row by row or batch by batch, and written to Parquet as it is
read, so preparing data never holds a whole corpus in memory. Bad input raises
:class:`DataError` with a one-line message naming the file and the row, before any model is
loaded.

Two source layouts are understood:

* the schema of the Hugging Face dataset ``namespace-Pt/msmarco`` (``query: str``,
  ``positive: list[str]``), from the Hub or a local ``.jsonl`` / ``.json`` / ``.parquet``
  file: the corpus is the unique positives of the first ``corpus_rows`` rows, the queries
  are the first ``num_queries`` rows and the qrels come from the positives;
* the official MS MARCO layout: ``collection.tsv`` (``pid\\ttext``), ``queries.tsv``
  (``qid\\ttext``) and TREC qrels (``qid 0 pid rel``). The corpus may also be a
  Parquet / JSONL / Hub table (text column ``text``, ``content`` or ``passage``; without an
  id column, each passage's id is :func:`passage_id` of its text), combined
  with ``--dataset`` whose positives are then matched into it by exact text.

A separate corpus table is written as it streams, then checked by :func:`check_corpus`, a
Ray Data job (broadcast join with the positives or judged pids, sort by pid), so
neither the matching nor the duplicate-id check holds the corpus's ids in the driver.

Example::

    from rerank_ray.datasets import DataConfig, prepare_data
    config = DataConfig(dataset="dev.jsonl", corpus_rows=5000, num_queries=100)
    prepared = prepare_data(config, "runs/seed/data")
    prepared.num_corpus
    # 5000
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from rerank_ray.errors import ConfigError, DataError
from rerank_ray.io import (
    absolute,
    discard,
    file_info,
    is_uri,
    iter_parquet_batches,
    join,
    makedirs,
    open_binary,
    parquet_writer,
    publish,
    read_dataset,
    read_table,
    read_text,
    split,
    temporary_sibling,
)
from rerank_ray.options import option

log = logging.getLogger("rerank_ray")

CORPUS_SCHEMA = pa.schema([("pid", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("qid", pa.string()), ("text", pa.string())])
QRELS_SCHEMA = pa.schema([("qid", pa.string()), ("pid", pa.string()), ("relevance", pa.int32())])

#: Column names tried, in order, when a corpus or query table does not say which is which.
ID_COLUMNS = ("pid", "qid", "id", "_id", "docid", "doc_id", "query_id")
TEXT_COLUMNS = ("text", "content", "passage", "contents", "query")

#: Rows per Parquet write: large enough for efficient row groups, small enough to stream.
WRITE_BATCH_ROWS = 65_536
TABULAR_SUFFIXES = (".jsonl", ".json", ".parquet", ".tsv")
#: Rows per file of the normalized corpus (a directory). Ray Data reads it in tasks of whole
#: row groups (WRITE_BATCH_ROWS rows each), packed up to ``rerank_ray.io.READ_TASK_BYTES``.
CORPUS_ROWS_PER_FILE = 4 * WRITE_BATCH_ROWS


@dataclass(frozen=True)
class DataConfig:
    """Where the evaluation data comes from.

    Args:
        dataset: A ``namespace-Pt/msmarco``-schema source: a Hub name or a local
            ``.jsonl`` / ``.json`` / ``.parquet`` file.
        split: The split of a Hub dataset.
        corpus_rows: The corpus is the unique positives of the first ``corpus_rows`` rows of
            ``dataset`` (all rows when ``None``). Ignored when ``corpus`` is given.
        num_queries: The first ``num_queries`` rows of ``dataset`` are the queries (all rows
            when ``None``).
        corpus: A corpus table: MS MARCO ``collection.tsv``, Parquet, JSONL or a Hub name.
        queries: MS MARCO ``queries.tsv`` (or a Parquet / JSONL table with ``qid``, ``text``).
        qrels: TREC qrels (``qid 0 pid rel``).
    """

    dataset: str | None = option(
        None,
        "--dataset",
        "namespace-Pt/msmarco schema: Hub name or .jsonl/.json/.parquet",
        metavar="SRC",
        path=True,
    )
    split: str = option("dev", "--split", "split of a Hub dataset")
    corpus_rows: int | None = option(
        None,
        "--corpus-rows",
        "corpus = unique positives of the first N rows",
        type=int,
        metavar="N",
    )
    num_queries: int | None = option(
        None, "--num-queries", "queries = the first M rows", type=int, metavar="M"
    )
    corpus: str | None = option(
        None,
        "--corpus",
        "collection.tsv (pid\\ttext), Parquet, JSONL or Hub corpus",
        metavar="SRC",
        path=True,
    )
    queries: str | None = option(
        None, "--queries", "queries.tsv (qid\\ttext)", metavar="SRC", path=True
    )
    qrels: str | None = option(
        None, "--qrels", "TREC qrels: qid 0 pid relevance", metavar="SRC", path=True
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` when the combination of sources makes no sense, and
        :class:`DataError` when a local source is missing."""
        for name in ("corpus_rows", "num_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}", DataConfig, name)
        if self.dataset is None:
            missing = [n for n in ("corpus", "queries", "qrels") if getattr(self, n) is None]
            if missing:
                raise ConfigError(
                    "give dataset, or all of corpus queries qrels (missing: "
                    + ", ".join(missing)
                    + ")",
                    DataConfig,
                    "dataset",
                    "corpus",
                    "queries",
                    "qrels",
                )
        elif self.queries is not None or self.qrels is not None:
            raise ConfigError(
                "queries and qrels come from dataset's positives; give one layout",
                DataConfig,
                "queries",
                "qrels",
                "dataset",
            )
        if (
            self.dataset is not None
            and self.corpus is None
            and self.corpus_rows is not None
            and self.num_queries is not None
            and self.num_queries > self.corpus_rows
        ):
            raise ConfigError(
                f"num_queries ({self.num_queries}) exceeds corpus_rows ({self.corpus_rows}):"
                " the positives of later queries would not be in the corpus",
                DataConfig,
                "num_queries",
                "corpus_rows",
            )
        # Files first, before anything slow starts (Ray, a Hub download): a typo fails at once.
        for source in (self.dataset, self.corpus, self.queries, self.qrels):
            if source is not None and is_local_source(source):
                _check_file(source)


@dataclass(frozen=True)
class PreparedData:
    """The normalized tables of a run, with their row counts."""

    corpus_path: str
    queries_path: str
    qrels_path: str
    num_corpus: int
    num_queries: int
    num_qrels: int
    corpus_hash: str = ""
    queries_hash: str = ""

    def to_dict(self) -> dict:
        return {
            "corpus": {
                "path": self.corpus_path,
                "rows": self.num_corpus,
                "content_hash": self.corpus_hash,
            },
            "queries": {
                "path": self.queries_path,
                "rows": self.num_queries,
                "content_hash": self.queries_hash,
            },
            "qrels": {"path": self.qrels_path, "rows": self.num_qrels},
        }

    @classmethod
    def from_dict(cls, data: dict) -> PreparedData:
        return cls(
            corpus_path=data["corpus"]["path"],
            queries_path=data["queries"]["path"],
            qrels_path=data["qrels"]["path"],
            num_corpus=data["corpus"]["rows"],
            num_queries=data["queries"]["rows"],
            num_qrels=data["qrels"]["rows"],
            corpus_hash=data["corpus"].get("content_hash", ""),
            queries_hash=data["queries"].get("content_hash", ""),
        )

    @classmethod
    def from_writers(cls, corpus, queries, qrels) -> PreparedData:
        return cls(
            corpus.path, queries.path, qrels.path, corpus.rows, queries.rows, qrels.rows,
            corpus.content_hash, queries.content_hash,
        )  # fmt: skip


def passage_id(text: str) -> str:
    """A stable id for a passage known only by its text: a content hash.

    The same text gets the same id in every run, whatever ``corpus_rows`` is, so qrels and
    retrieval results of different runs can be compared.

    Example:
        >>> passage_id("hello")
        'p2cf24dba5fb0a30'
    """
    return "p" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:15]


# --------------------------------------------------------------------------- readers


def _check_file(path: str) -> None:
    info = file_info(path)
    if info.type == FileType.NotFound:
        raise DataError(f"{path}: no such file")
    if info.type == FileType.Directory:
        raise DataError(f"{path}: is a directory, expected a file")
    if info.size == 0:
        raise DataError(f"{path}: file is empty")


def is_local_source(source: str) -> bool:
    """A local path or a URI (``s3://…``), not a Hub dataset name (``namespace-Pt/msmarco``,
    which has a slash too: a name that is not a local path is the Hub's)."""
    return (
        source.endswith(TABULAR_SUFFIXES)
        or is_uri(source)
        or source.startswith((".", os.path.sep, "~"))
        or os.path.exists(source)
    )


#: The UTF-8 byte-order mark some editors write at the start of a file; it is not data.
BOM = "\ufeff"


def _decode(raw: bytes, path: str, line_number: int) -> str:
    """Line ``line_number`` of ``path`` as text, without a byte-order mark at the file's start.

    Raises:
        DataError: bytes that are not UTF-8, naming the file, line and byte.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}, line {line_number}: not valid UTF-8 (byte {error.start})"
        ) from None
    return text.removeprefix(BOM) if line_number == 1 else text


def iter_records(source: str, split: str = "train") -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)`` for each row of a JSONL, JSON, Parquet file or Hub dataset.

    ``where`` names the file and row for error messages (``"dev.jsonl, line 7"``). Hub
    datasets are streamed with :func:`datasets.load_dataset` so only the rows used are read.
    """
    if not is_local_source(source):
        yield from _iter_hub_records(source, split)
        return
    _check_file(source)
    if source.endswith(".parquet"):
        row = 0
        for batch in iter_parquet_batches(source):
            for record in batch.to_pylist():
                row += 1
                yield f"{source}, row {row}", record
        if row == 0:
            raise DataError(f"{source}: no rows")
        return
    if source.endswith(".json") and not _looks_like_jsonl(source):
        try:
            data = json.loads(read_text(source).removeprefix(BOM))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(data, list):
            raise DataError(f"{source}: expected a JSON list of records")
        for index, record in enumerate(data, start=1):
            yield f"{source}, record {index}", record
        return
    seen = 0
    with open_binary(source) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _decode(raw, source, line_number).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{source}, line {line_number}: not valid JSON ({error.msg})"
                ) from None
            seen += 1
            yield f"{source}, line {line_number}", record
    if seen == 0:
        raise DataError(f"{source}: no records")


def _looks_like_jsonl(path: str) -> bool:
    """Whether a ``.json`` file holds one record a line rather than a list: its first
    character (after a byte-order mark and whitespace) is not ``[``."""
    with open_binary(path) as handle:
        head = handle.read(4096).removeprefix(BOM.encode()).lstrip()
    return head[:1] != b"["


def _iter_hub_records(name: str, split: str) -> Iterator[tuple[str, dict]]:
    import datasets  # imported here: loading it costs seconds and local files do not need it

    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as error:  # the Hub raises many types; the user needs one line
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise DataError(f"{name}: cannot load from the Hugging Face Hub ({first_line})") from None
    for index, record in enumerate(stream, start=1):
        yield f"{name} [{split}], row {index}", record


def iter_tsv(path: str, columns: tuple[str, str]) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line_number, id, text)`` from a two-column TSV file such as ``collection.tsv``.

    Lines end in LF or CRLF; empty lines are skipped; a byte-order mark at the start of the
    file is not part of the first id.

    Raises:
        DataError: on a missing or empty file, a line without exactly one tab, an empty id, or
            bytes that are not UTF-8, naming the file and line.
    """
    _check_file(path)
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, line_number).rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataError(
                    f"{path}, line {line_number}: expected 2 tab-separated fields"
                    f" ({columns[0]}, {columns[1]}), got {len(fields)}"
                )
            identifier, text = fields
            if not identifier.strip():
                raise DataError(f"{path}, line {line_number}: empty {columns[0]}")
            yield line_number, identifier.strip(), text


def iter_trec_qrels(path: str) -> Iterator[tuple[int, str, str, int]]:
    """Yield ``(line_number, qid, pid, relevance)`` from TREC qrels (``qid 0 pid rel``).

    Fields are whitespace-separated; relevance is an integer and may be graded. Blank lines,
    CRLF line ends and a byte-order mark at the start of the file are not data.
    """
    _check_file(path)
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, line_number).strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) != 4:
                raise DataError(
                    f"{path}, line {line_number}: expected 4 fields 'qid 0 pid relevance',"
                    f" got {len(fields)}"
                )
            try:
                relevance = int(fields[3])
            except ValueError:
                raise DataError(
                    f"{path}, line {line_number}: relevance {fields[3]!r} is not an integer"
                ) from None
            yield line_number, fields[0], fields[2], relevance


# --------------------------------------------------------------------------- writers


class _TableWriter:
    """Writes rows to Parquet in batches and publishes the table atomically on close.

    With ``rows_per_file``, ``path`` becomes a directory of ``part-00000.parquet``, … files of
    at most about that many rows, so that no file's footer and row groups hold memory that
    grows with the corpus when one reader opens it whole (Ray Data's read tasks themselves
    are sized by ``rerank_ray.io.READ_TASK_BYTES``).
    """

    def __init__(self, path: str, schema: pa.Schema, rows_per_file: int | None = None):
        self.path = path
        self.schema = schema
        self.rows = 0
        self._columns: dict[str, list] = {name: [] for name in schema.names}
        # A hidden staging folder: unfinished, the table never looks finished, and Ray Data
        # (which skips hidden files, not hidden folders) can still read the files to check them.
        self._staging = temporary_sibling(path)
        makedirs(self._staging)
        self._rows_per_file = rows_per_file
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0
        self._files = 0
        self._finished = False
        self._digest = hashlib.sha256()

    @property
    def finished_path(self) -> str:
        """The unpublished table: the staging folder itself, or the one file inside it."""
        if self._rows_per_file:
            return self._staging
        return join(self._staging, split(self.path)[1])

    def _open_next_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
        name = f"part-{self._files:05d}.parquet" if self._rows_per_file else None
        self._writer = parquet_writer(
            join(self._staging, name) if name else self.finished_path, self.schema
        )
        self._files += 1
        self._rows_in_file = 0

    @property
    def content_hash(self) -> str:
        return "sha256:" + self._digest.hexdigest()

    def add(self, *values) -> None:
        for name, value in zip(self.schema.names, values):
            self._columns[name].append(value)
        self.rows += 1
        # A content hash of the rows in order: the embedding cache's key for this table.
        self._digest.update("\t".join(map(str, values)).encode("utf-8") + b"\n")
        if len(self._columns[self.schema.names[0]]) >= WRITE_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        batch = self._columns[self.schema.names[0]]
        if not batch:
            return
        full = self._rows_per_file and self._rows_in_file >= self._rows_per_file
        if self._writer is None or full:
            self._open_next_file()
        self._writer.write_table(pa.table(self._columns, schema=self.schema))
        self._rows_in_file += len(batch)
        self._columns = {name: [] for name in self.schema.names}

    def finish(self) -> str:
        """Write the last rows and close the table, unpublished; returns :attr:`finished_path`."""
        if not self._finished:
            self._flush()
            if self._writer is None:  # no rows: still a file, with the schema
                self._open_next_file()
            self._writer.close()
            self._writer = None
            self._finished = True
        return self.finished_path

    def close(self) -> None:
        publish(self.finish(), self.path)
        discard(self._staging)  # a table of one file leaves its staging folder behind

    def keep_first_of(self, ids: set[str]) -> None:
        """Rewrite the finished table without the later rows of each id in ``ids``.

        Only the repeated ids are held (exact duplicate rows are rare), never the table.
        """
        kept = _TableWriter(self.path, self.schema, self._rows_per_file)
        seen: set[str] = set()
        for batch in iter_parquet_batches(self.finish()):
            for values in zip(*(batch.column(n).to_pylist() for n in self.schema.names)):
                if values[0] in ids:
                    if values[0] in seen:
                        continue
                    seen.add(values[0])
                kept.add(*values)
        kept.finish()
        discard(self._staging)
        self.__dict__.update(kept.__dict__)  # this writer now stands for the rewritten file

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        discard(self._staging)


# --------------------------------------------------------------------------- layouts


def _field(record: dict, name: str, where: str, kind: type) -> object:
    if not isinstance(record, dict) or name not in record:
        raise DataError(f"{where}: missing column '{name}'")
    value = record[name]
    if kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"{where}: column '{name}' must be a list of strings")
    elif not isinstance(value, kind):
        raise DataError(f"{where}: column '{name}' must be a {kind.__name__}")
    return value


def _iter_query_rows(config: DataConfig) -> Iterator[tuple[int, str, str, list[str]]]:
    """Yield ``(row_index, where, query, positives)`` from a namespace-Pt-schema dataset."""
    # Without a separate corpus, queries are a prefix of the corpus rows (validated).
    limit = config.num_queries if config.corpus is not None else config.corpus_rows
    for index, (where, record) in enumerate(iter_records(config.dataset, config.split)):
        if limit is not None and index >= limit:
            return
        query = _field(record, "query", where, str)
        positives = _field(record, "positive", where, list)
        yield index, where, query, positives


@contextlib.contextmanager
def _table_writers(out_dir: str) -> Iterator[tuple[_TableWriter, _TableWriter, _TableWriter]]:
    """The three normalized tables; all published together, or none on an error."""
    writers = (
        _TableWriter(join(out_dir, "corpus.parquet"), CORPUS_SCHEMA, CORPUS_ROWS_PER_FILE),
        _TableWriter(join(out_dir, "queries.parquet"), QUERIES_SCHEMA),
        _TableWriter(join(out_dir, "qrels.parquet"), QRELS_SCHEMA),
    )
    try:
        yield writers
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.close()


def _prepare_from_dataset(config: DataConfig, out_dir: str) -> PreparedData:
    with _table_writers(out_dir) as (corpus, queries, qrels):
        if config.corpus is None:
            _dataset_rows_to_tables(config, corpus, queries, qrels)
        else:
            _dataset_against_corpus(config, corpus, queries, qrels)
    return PreparedData.from_writers(corpus, queries, qrels)


def _dataset_rows_to_tables(config, corpus, queries, qrels) -> None:
    seen_pids: set[str] = set()
    rows = 0
    for index, _where, query, positives in _iter_query_rows(config):
        rows += 1
        in_corpus = config.corpus_rows is None or index < config.corpus_rows
        is_query = index < config.num_queries if config.num_queries is not None else in_corpus
        pids = []
        for text in positives:
            pid = passage_id(text)
            pids.append(pid)
            if in_corpus and pid not in seen_pids:
                seen_pids.add(pid)
                corpus.add(pid, text)
        if is_query:
            qid = str(index)
            queries.add(qid, query)
            for pid in dict.fromkeys(pids):
                qrels.add(qid, pid, 1)
    if rows == 0:
        raise DataError(f"{config.dataset}: no rows")
    _check_shortfall(config, rows)


def _check_shortfall(config: DataConfig, rows: int) -> None:
    for name in ("corpus_rows", "num_queries"):
        wanted = getattr(config, name)
        if wanted is not None and wanted > rows and not (name == "corpus_rows" and config.corpus):
            raise DataError(
                f"{config.dataset}: {name} {wanted} but the dataset has only {rows} rows",
                DataConfig,
                name,
            )


def _dataset_against_corpus(config, corpus, queries, qrels) -> None:
    """Queries and positives from ``dataset``; passages and their ids from ``corpus``.

    The driver holds the positives (as many as the queries have), never the corpus: the
    corpus is streamed once into its table, then :func:`check_corpus` matches the positives
    into it on Ray Data. A positive whose text (stripped) several passages share makes each
    of them relevant: they are the same passage under different ids.
    """
    qids_by_text: dict[str, list[str]] = {}
    rows = 0
    for index, _where, query, positives in _iter_query_rows(config):
        rows += 1
        qid = str(index)
        queries.add(qid, query)
        for text in _stripped(list(dict.fromkeys(positives))):
            qids = qids_by_text.setdefault(text, [])
            if qid not in qids:
                qids.append(qid)
    if rows == 0:
        raise DataError(f"{config.dataset}: no rows")
    _check_shortfall(config, rows)
    wanted = list(qids_by_text)
    matches = _write_checked_corpus(corpus, config.corpus, config.split, wanted, "text")
    if len(matches) < len(wanted):
        raise DataError(
            f"{config.corpus}: {len(wanted) - len(matches)} of {len(wanted)} positives of"
            f" {config.dataset} are not in the corpus (matched by exact text)"
        )
    for index, text in enumerate(wanted):
        for qid in qids_by_text[text]:
            for pid in matches[index]:
                qrels.add(qid, pid, 1)


def _stripped(texts: list[str]) -> list[str]:
    """``texts`` without surrounding whitespace, as :func:`check_corpus` strips the corpus."""
    import pyarrow.compute as pc

    return pc.utf8_trim_whitespace(pa.array(texts, pa.string())).to_pylist()


def _pick_column(record: dict, candidates: tuple[str, ...], where: str, what: str) -> str:
    for name in candidates:
        if name in record:
            return name
    raise DataError(f"{where}: no {what} column (looked for {', '.join(candidates)})")


def _iter_table(
    source: str, split: str, id_names, text_names, id_from_text: bool = False
) -> Iterator[tuple[str, str, str]]:
    """Yield ``(where, id, text)`` from a TSV, JSONL, Parquet or Hub table.

    With ``id_from_text``, a table without an id column (a corpus with only ``content``)
    gets :func:`passage_id` of each text as its id.
    """
    if source.endswith(".tsv"):
        for line_number, identifier, text in iter_tsv(source, ("id", "text")):
            yield f"{source}, line {line_number}", identifier, text
        return
    id_column = text_column = None
    for where, record in iter_records(source, split):
        if text_column is None:
            text_column = _pick_column(record, text_names, where, "text")
            if id_from_text and not any(name in record for name in id_names):
                id_column = ""  # ids from the texts
            else:
                id_column = _pick_column(record, id_names, where, "id")
        text = record.get(text_column)
        if not isinstance(text, str):
            raise DataError(f"{where}: column '{text_column}' must be a string")
        identifier = record.get(id_column) if id_column else passage_id(text)
        if identifier is None or str(identifier).strip() == "":
            raise DataError(f"{where}: empty id in column '{id_column}'")
        yield where, str(identifier), text


def _write_checked_corpus(
    corpus: _TableWriter, source: str, split: str, wanted: list[str], match_on: str
) -> dict[int, list[str]]:
    """Stream ``source`` into ``corpus``, check its ids, and find the ``wanted`` passages.

    Returns:
        ``{index in wanted: [pid, ...]}`` for each wanted value found.

    Raises:
        DataError: a pid that appears twice with different texts, naming the second row.
            Exact duplicate rows are dropped (the first is kept).
    """
    for _where, pid, text in _iter_table(source, split, ID_COLUMNS, TEXT_COLUMNS, True):
        corpus.add(pid, text)
    if corpus.rows == 0:
        return {}
    check = check_corpus(corpus.finish(), corpus.rows, wanted, match_on)
    if check.conflicting:
        raise DataError(_first_conflict(source, split, check.conflicting))
    if check.repeated:
        corpus.keep_first_of(check.repeated)
    return check.matches


def _first_conflict(source: str, split: str, pids: set[str]) -> str:
    """The message for the first row that repeats one of ``pids`` with another text.

    Only runs when :func:`check_corpus` found such pids; it re-reads the source sequentially
    to name the row, holding only those pids.
    """
    first_digest: dict[str, bytes] = {}
    for where, pid, text in _iter_table(source, split, ID_COLUMNS, TEXT_COLUMNS, True):
        if pid in pids:
            digest = _digest(text)
            if first_digest.setdefault(pid, digest) != digest:
                return f"{where}: pid {pid} appears twice with different texts"
    return f"{source}: pids {', '.join(sorted(pids))} appear twice with different texts"


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


@dataclass(frozen=True)
class CorpusCheck:
    """What :func:`check_corpus` found: only the rows that matter, never the whole corpus.

    Attributes:
        conflicting: Pids that appear more than once with different texts.
        repeated: Pids that appear more than once, always with the same text.
        matches: ``{index in wanted: [pid, ...]}`` for each wanted value found.
    """

    conflicting: set[str]
    repeated: set[str]
    matches: dict[int, list[str]]


def iter_sorted_groups(
    make_dataset: Callable[[], object], key: str, keep: Callable[[pa.Table], pa.Table]
) -> Iterator[list[dict]]:
    """The rows of a dataset that ``keep`` leaves, grouped by ``key``, in ``key`` order.

    Ray Data sorts the rows by ``key``; ``keep`` reduces each sorted block to the rows that
    can matter, and must keep the block's first and last rows (their key may go on in the
    next block). The driver reads what is kept in order and yields one key's rows at a
    time, so it holds one group, not the dataset.

    The sort is Ray Data's pull-based one: range-partitioned, one partition per input block,
    so a task holds about one block however large the dataset, and a small dataset is one
    task. (Ray 2.60's default shuffle plans 200 partitions when it cannot count the blocks,
    as with Parquet reads, which costs seconds even on a tiny corpus.)

    Args:
        make_dataset: Builds the Ray Data dataset (with a ``key`` column). Called here, because
            a dataset runs with the Ray Data context it was created in, and the sort's
            settings are made here.
        key: The column to group by.
        keep: ``sorted block -> rows of it`` (a ``pyarrow.Table``), run on Ray's workers.

    Example::

        import ray.data

        items = lambda: ray.data.from_items([{"id": "b"}, {"id": "a"}, {"id": "b"}])
        [[r["id"] for r in g] for g in iter_sorted_groups(items, "id", lambda b: b)]
        # [['a'], ['b', 'b']]
    """
    import ray.data
    from ray.data.context import ShuffleStrategy

    context = ray.data.DataContext.get_current().copy()
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    context.execution_options.preserve_order = True  # blocks reach the driver in key order
    with ray.data.DataContext.current(context):
        kept = make_dataset().sort(key).map_batches(keep, batch_format="pyarrow", batch_size=None)
        group: list[dict] = []
        for row in kept.iter_rows():
            if group and row[key] != group[0][key]:
                yield group
                group = []
            group.append(row)
        if group:
            yield group


def check_corpus(path: str, rows: int, wanted: list[str], match_on: str) -> CorpusCheck:
    """One distributed pass over a corpus table: its repeated pids, and its wanted rows.

    A broadcast hash join and a sort on Ray Data. ``wanted`` (the positives' texts or the
    judged pids: as many as the queries have) goes to every task once through the object
    store; the corpus streams past as blocks, each reduced to ``(pid, 8-byte digest of the
    text, index of the wanted value it equals or -1)``; Ray Data sorts these by pid
    (range-partitioned: each task holds about one block, however large the corpus), and
    each sorted block keeps only the rows that can matter: wanted ones, those whose pid
    repeats, and its first and last (their pid may go on in the next block). The driver
    reads these in pid order and settles one pid at a time, so its memory does not grow
    with the corpus.

    Why a sort, not a hash aggregation (``groupby().aggregate()``): the aggregation keeps
    every pid of its partitions in one actor until the end, and there are at most as many
    actors as CPUs, so on a small cluster that memory grows with the corpus, and it is
    slower than the sort (BENCHMARKS.md, prepare stage).

    Args:
        path: A Parquet table (file or directory) with ``pid`` and ``text``.
        rows: Its row count (for the log line).
        wanted: Values to find: stripped texts (``match_on="text"``, compared with each
            passage stripped) or pids (``match_on="pid"``).
        match_on: ``"text"`` or ``"pid"``.

    Example::

        check = check_corpus("data/corpus.parquet", 3, ["passage A"], "text")
        check.matches
        # {0: ['9']}
    """
    import ray

    log.info("checking %d corpus rows: repeated pids, %d wanted values", rows, len(wanted))
    wanted_ref = ray.put(pa.array(wanted, pa.string()))

    def digests():
        return (
            read_dataset(path)
            .select_columns(["pid", "text"])
            .map_batches(
                _digests_and_matches,
                fn_kwargs={"wanted": [wanted_ref], "match_on": match_on},
                batch_format="pyarrow",
                batch_size=WRITE_BATCH_ROWS,  # bounds the Python strings hashed per call
            )
        )

    conflicting, repeated, matches = set(), set(), {}
    for group in iter_sorted_groups(digests, "pid", _rows_of_interest):
        _settle(group, conflicting, repeated, matches)
    for pids in matches.values():
        pids.sort()
    return CorpusCheck(conflicting, repeated, matches)


def _rows_of_interest(block: pa.Table) -> pa.Table:
    """The rows of a pid-sorted block that can matter: wanted ones, those whose pid repeats
    within the block, and the first and last (their pid may go on in the next block)."""
    import pyarrow.compute as pc

    count = block.num_rows
    if count == 0:
        return block
    pids = block.column("pid")
    same_as_next = pc.equal(pids.slice(0, count - 1), pids.slice(1)).to_numpy()
    keep = block.column("wanted").to_numpy() >= 0
    keep[:-1] |= same_as_next
    keep[1:] |= same_as_next
    keep[[0, -1]] = True
    return block.filter(pa.array(keep))


def _settle(group: list[dict], conflicting: set, repeated: set, matches: dict) -> None:
    """File one pid's rows (all of them, or only the edge row of a block) under what they show."""
    pid = group[0]["pid"]
    if len({row["digest"] for row in group}) > 1:
        conflicting.add(pid)
    elif len(group) > 1:
        repeated.add(pid)
    for index in sorted({int(row["wanted"]) for row in group if row["wanted"] >= 0}):
        matches.setdefault(index, []).append(pid)


def _digests_and_matches(block: pa.Table, wanted: list, match_on: str) -> pa.Table:
    """``(pid, digest, wanted)`` of a corpus block; ``wanted`` is ``[ObjectRef]`` (wrapped,
    so Ray Data passes the reference and the array is read from the local object store)."""
    import pyarrow.compute as pc
    import ray

    values = ray.get(wanted[0])
    texts = block.column("text")
    probe = pc.utf8_trim_whitespace(texts) if match_on == "text" else block.column("pid")
    digests = [int.from_bytes(_digest(t), "little", signed=True) for t in texts.to_pylist()]
    return pa.table(
        {
            "pid": block.column("pid"),
            "digest": pa.array(digests, pa.int64()),
            "wanted": pc.fill_null(pc.index_in(probe, value_set=values), -1).cast(pa.int32()),
        }
    )


def _prepare_from_tables(config: DataConfig, out_dir: str) -> PreparedData:
    # Queries and qrels are small: read and check them first, then stream the corpus once.
    with _table_writers(out_dir) as (corpus, queries, qrels):
        query_ids: set[str] = set()
        query_names = ("qid", "id", "_id", "query_id")
        for where, qid, text in _iter_table(
            config.queries, config.split, query_names, TEXT_COLUMNS
        ):
            if qid in query_ids:
                raise DataError(f"{where}: qid {qid} appears twice")
            query_ids.add(qid)
            queries.add(qid, text)
        judged = _read_judgements(config.qrels, config.queries, query_ids)
        judged_pids = sorted({pid for _, _, pid, _ in judged})
        matches = _write_checked_corpus(corpus, config.corpus, config.split, judged_pids, "pid")
        found = {judged_pids[index] for index in matches}
        for line_number, qid, pid, relevance in judged:
            if pid not in found:
                raise DataError(
                    f"{config.qrels}, line {line_number}: pid {pid} is not in {config.corpus}"
                )
            qrels.add(qid, pid, relevance)
    return PreparedData.from_writers(corpus, queries, qrels)


def _read_judgements(
    path: str, queries_path: str, query_ids: set[str]
) -> list[tuple[int, str, str, int]]:
    """The judgements of a TREC qrels file, one per ``(qid, pid)``, in file order.

    A line that repeats an earlier ``(qid, pid)`` with the same relevance is dropped; with
    another relevance it is refused, as is a qid that is not in the queries.

    Raises:
        DataError: naming the file and line (and the earlier line of a conflict).
    """
    first: dict[tuple[str, str], tuple[int, int]] = {}
    judged: list[tuple[int, str, str, int]] = []
    for line_number, qid, pid, relevance in iter_trec_qrels(path):
        if qid not in query_ids:
            raise DataError(f"{path}, line {line_number}: qid {qid} is not in {queries_path}")
        earlier = first.setdefault((qid, pid), (line_number, relevance))
        if earlier[0] != line_number:
            if earlier[1] != relevance:
                raise DataError(
                    f"{path}, line {line_number}: qid {qid}, pid {pid} judged {relevance}"
                    f" here but {earlier[1]} on line {earlier[0]}"
                )
            continue
        judged.append((line_number, qid, pid, relevance))
    if not judged:
        raise DataError(f"{path}: no judgements")
    return judged


def prepare_data(config: DataConfig, out_dir: str | os.PathLike) -> PreparedData:
    """Read the sources of ``config`` and write ``corpus``, ``queries`` and ``qrels`` Parquet.

    Args:
        config: The data sources.
        out_dir: Directory for ``corpus.parquet`` (a directory of part files),
            ``queries.parquet`` and ``qrels.parquet``.

    Returns:
        The paths and row counts of the three tables.

    Raises:
        DataError: a one-line message naming the file and row of the first bad input. No
            table is left behind.
    """
    config.validate()
    out = absolute(out_dir)
    makedirs(out)
    if config.dataset is not None:
        prepared = _prepare_from_dataset(config, out)
    else:
        prepared = _prepare_from_tables(config, out)
    if prepared.num_corpus == 0:
        raise DataError(f"{config.corpus or config.dataset}: the corpus is empty")
    return prepared


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """Read a normalized qrels table into ``{qid: {pid: relevance}}``."""
    table = read_table(path, schema=QRELS_SCHEMA)
    qrels: dict[str, dict[str, int]] = {}
    for qid, pid, relevance in zip(*(table[c].to_pylist() for c in QRELS_SCHEMA.names)):
        qrels.setdefault(qid, {})[pid] = relevance
    return qrels
