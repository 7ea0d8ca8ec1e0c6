"""The normalized tables a run reads: ``corpus``, ``queries`` and ``qrels`` in Parquet.

Their schemas, the staged writer that streams rows into them and publishes all three
together (or none), and the readers of id/text tables of any source format (columns
picked by name) and of a normalized qrels table. The sources' formats are read by
:mod:`rerank_ray.formats`; which rows go into which table is decided by
:mod:`rerank_ray.datasets`.

Example::

    with table_writers("runs/seed/data") as (corpus, queries, qrels):
        corpus.add("7", "passage text")
        queries.add("0", "a query")
        qrels.add("0", "7", 1)
    read_qrels("runs/seed/data/qrels.parquet")
    # {'0': {'7': 1}}
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from rerank_ray.errors import DataError
from rerank_ray.formats import iter_records, iter_tsv, passage_id
from rerank_ray.io import discard, join, makedirs, publish, split, temporary_sibling
from rerank_ray.parquet import iter_parquet_batches, parquet_writer, read_table

CORPUS_SCHEMA = pa.schema([("pid", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("qid", pa.string()), ("text", pa.string())])
QRELS_SCHEMA = pa.schema([("qid", pa.string()), ("pid", pa.string()), ("relevance", pa.int32())])

#: Column names tried, in order, when a corpus or query table does not say which is which.
ID_COLUMNS = ("pid", "qid", "id", "_id", "docid", "doc_id", "query_id")
TEXT_COLUMNS = ("text", "content", "passage", "contents", "query")

#: Rows per Parquet write: large enough for efficient row groups, small enough to stream.
WRITE_BATCH_ROWS = 65_536
#: Rows per file of the normalized corpus (a directory). Ray Data reads it in tasks of whole
#: row groups (WRITE_BATCH_ROWS rows each), packed up to
#: ``rerank_ray.parquet.READ_TASK_BYTES``.
CORPUS_ROWS_PER_FILE = 4 * WRITE_BATCH_ROWS


class TableWriter:
    """Writes rows to Parquet in batches and publishes the table atomically on close.

    With ``rows_per_file``, ``path`` becomes a directory of ``part-00000.parquet``, … files of
    at most about that many rows, so that no file's footer and row groups hold memory that
    grows with the corpus when one reader opens it whole (Ray Data's read tasks themselves
    are sized by ``rerank_ray.parquet.READ_TASK_BYTES``).
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
        kept = TableWriter(self.path, self.schema, self._rows_per_file)
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


@contextlib.contextmanager
def table_writers(out_dir: str) -> Iterator[tuple[TableWriter, TableWriter, TableWriter]]:
    """The three normalized tables; all published together, or none on an error."""
    writers = (
        TableWriter(join(out_dir, "corpus.parquet"), CORPUS_SCHEMA, CORPUS_ROWS_PER_FILE),
        TableWriter(join(out_dir, "queries.parquet"), QUERIES_SCHEMA),
        TableWriter(join(out_dir, "qrels.parquet"), QRELS_SCHEMA),
    )
    try:
        yield writers
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.close()


def _pick_column(record: dict, candidates: tuple[str, ...], where: str, what: str) -> str:
    for name in candidates:
        if name in record:
            return name
    raise DataError(f"{where}: no {what} column (looked for {', '.join(candidates)})")


def iter_table(
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


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """Read a normalized qrels table into ``{qid: {pid: relevance}}``."""
    table = read_table(path, schema=QRELS_SCHEMA)
    qrels: dict[str, dict[str, int]] = {}
    for qid, pid, relevance in zip(*(table[c].to_pylist() for c in QRELS_SCHEMA.names)):
        qrels.setdefault(qid, {})[pid] = relevance
    return qrels
