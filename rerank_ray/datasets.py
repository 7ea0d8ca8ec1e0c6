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
  Parquet / JSONL / Hub table (text column ``text``, ``content`` or ``passage``), combined
  with ``--dataset`` whose positives are then matched into it by exact text.

Example:
    >>> from rerank_ray.datasets import DataConfig, prepare_data
    >>> config = DataConfig(dataset="dev.jsonl", corpus_rows=5000, num_queries=100)
    >>> prepared = prepare_data(config, "runs/seed/data")  # doctest: +SKIP
    >>> prepared.num_corpus  # doctest: +SKIP
    5000
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rerank_ray.errors import DataError
from rerank_ray.io import discard, publish, temporary_sibling

CORPUS_SCHEMA = pa.schema([("pid", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("qid", pa.string()), ("text", pa.string())])
QRELS_SCHEMA = pa.schema([("qid", pa.string()), ("pid", pa.string()), ("relevance", pa.int32())])

#: Column names tried, in order, when a corpus or query table does not say which is which.
ID_COLUMNS = ("pid", "qid", "id", "_id", "docid", "doc_id", "query_id")
TEXT_COLUMNS = ("text", "content", "passage", "contents", "query")

#: Rows per Parquet write: large enough for efficient row groups, small enough to stream.
WRITE_BATCH_ROWS = 65_536
TABULAR_SUFFIXES = (".jsonl", ".json", ".parquet", ".tsv")


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

    dataset: str | None = None
    split: str = "dev"
    corpus_rows: int | None = None
    num_queries: int | None = None
    corpus: str | None = None
    queries: str | None = None
    qrels: str | None = None

    def validate(self) -> None:
        """Raise :class:`DataError` when the combination of sources makes no sense."""
        for name in ("corpus_rows", "num_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.dataset is None:
            missing = [n for n in ("corpus", "queries", "qrels") if getattr(self, n) is None]
            if missing:
                raise DataError(
                    "give --dataset, or all of --corpus --queries --qrels (missing: "
                    + ", ".join("--" + m for m in missing)
                    + ")"
                )
        elif self.queries is not None or self.qrels is not None:
            raise DataError("--queries/--qrels come from --dataset's positives; give one layout")
        if (
            self.dataset is not None
            and self.corpus is None
            and self.corpus_rows is not None
            and self.num_queries is not None
            and self.num_queries > self.corpus_rows
        ):
            raise DataError(
                f"--num-queries ({self.num_queries}) exceeds --corpus-rows ({self.corpus_rows}):"
                " the positives of later queries would not be in the corpus"
            )


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
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected a file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")


def _is_local(source: str) -> bool:
    return source.endswith(TABULAR_SUFFIXES) or os.path.sep in source or os.path.exists(source)


def _decode(raw: bytes, path: str, line_number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}, line {line_number}: not valid UTF-8 (byte {error.start})"
        ) from None


def iter_records(source: str, split: str = "train") -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)`` for each row of a JSONL, JSON, Parquet file or Hub dataset.

    ``where`` names the file and row for error messages (``"dev.jsonl, line 7"``). Hub
    datasets are streamed with :func:`datasets.load_dataset` so only the rows used are read.
    """
    if not _is_local(source):
        yield from _iter_hub_records(source, split)
        return
    _check_file(source)
    if source.endswith(".parquet"):
        parquet = pq.ParquetFile(source)
        row = 0
        for batch in parquet.iter_batches(batch_size=WRITE_BATCH_ROWS):
            for record in batch.to_pylist():
                row += 1
                yield f"{source}, row {row}", record
        if row == 0:
            raise DataError(f"{source}: no rows")
        return
    if source.endswith(".json") and not _looks_like_jsonl(source):
        with open(source, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise DataError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(data, list):
            raise DataError(f"{source}: expected a JSON list of records")
        for index, record in enumerate(data, start=1):
            yield f"{source}, record {index}", record
        return
    seen = 0
    with open(source, "rb") as handle:
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
    with open(path, "rb") as handle:
        head = handle.read(1).lstrip()
    return head != b"["


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

    Raises:
        DataError: on a missing or empty file, a line without exactly one tab, an empty id, or
            bytes that are not UTF-8, naming the file and line.
    """
    _check_file(path)
    with open(path, "rb") as handle:
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

    Fields are whitespace-separated; relevance is an integer and may be graded.
    """
    _check_file(path)
    with open(path, "rb") as handle:
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
    """Writes rows to a Parquet file in batches and publishes it atomically on close."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.rows = 0
        self._columns: dict[str, list] = {name: [] for name in schema.names}
        self._tmp_path = temporary_sibling(path)
        self._writer = pq.ParquetWriter(self._tmp_path, schema)
        self._digest = hashlib.sha256()

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
        if self._columns[self.schema.names[0]]:
            self._writer.write_table(pa.table(self._columns, schema=self.schema))
            self._columns = {name: [] for name in self.schema.names}

    def close(self) -> None:
        self._flush()
        self._writer.close()
        publish(self._tmp_path, self.path)

    def abort(self) -> None:
        self._writer.close()
        discard(self._tmp_path)


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
def _table_writers(out_dir: Path) -> Iterator[tuple[_TableWriter, _TableWriter, _TableWriter]]:
    """The three normalized tables; all published together, or none on an error."""
    writers = (
        _TableWriter(str(out_dir / "corpus.parquet"), CORPUS_SCHEMA),
        _TableWriter(str(out_dir / "queries.parquet"), QUERIES_SCHEMA),
        _TableWriter(str(out_dir / "qrels.parquet"), QRELS_SCHEMA),
    )
    try:
        yield writers
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.close()


def _prepare_from_dataset(config: DataConfig, out_dir: Path) -> PreparedData:
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
                f"{config.dataset}: --{name.replace('_', '-')} {wanted} but the dataset has"
                f" only {rows} rows"
            )


def _dataset_against_corpus(config, corpus, queries, qrels) -> None:
    """Queries and positives from ``dataset``; passages and their ids from ``corpus``.

    Only the positives' hashes are held in memory (a few thousand), never the corpus: the
    corpus is streamed once, written out, and each passage whose text hash is a positive's
    gives that positive its pid.
    """
    wanted: dict[str, list[str]] = {}  # positive text hash -> qids
    rows = 0
    for index, _where, query, positives in _iter_query_rows(config):
        rows += 1
        qid = str(index)
        queries.add(qid, query)
        for text in dict.fromkeys(positives):
            wanted.setdefault(_text_key(text), []).append(qid)
    if rows == 0:
        raise DataError(f"{config.dataset}: no rows")
    _check_shortfall(config, rows)
    found: dict[str, str] = {}
    for pid, text in _iter_corpus_table(config.corpus, config.split):
        corpus.add(pid, text)
        key = _text_key(text)
        if key in wanted and key not in found:
            found[key] = pid
    missing = len(wanted) - len(found)
    if missing:
        raise DataError(
            f"{config.corpus}: {missing} of {len(wanted)} positives of {config.dataset}"
            " are not in the corpus (matched by exact text)"
        )
    for key, qids in wanted.items():
        for qid in qids:
            qrels.add(qid, found[key], 1)


def _text_key(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def _pick_column(record: dict, candidates: tuple[str, ...], where: str, what: str) -> str:
    for name in candidates:
        if name in record:
            return name
    raise DataError(f"{where}: no {what} column (looked for {', '.join(candidates)})")


def _iter_table(source: str, split: str, id_names, text_names) -> Iterator[tuple[str, str, str]]:
    """Yield ``(where, id, text)`` from a TSV, JSONL, Parquet or Hub table."""
    if source.endswith(".tsv"):
        for line_number, identifier, text in iter_tsv(source, ("id", "text")):
            yield f"{source}, line {line_number}", identifier, text
        return
    id_column = text_column = None
    for where, record in iter_records(source, split):
        if id_column is None:
            id_column = _pick_column(record, id_names, where, "id")
            text_column = _pick_column(record, text_names, where, "text")
        identifier, text = record.get(id_column), record.get(text_column)
        if identifier is None or str(identifier).strip() == "":
            raise DataError(f"{where}: empty id in column '{id_column}'")
        if not isinstance(text, str):
            raise DataError(f"{where}: column '{text_column}' must be a string")
        yield where, str(identifier), text


def _iter_corpus_table(source: str, split: str) -> Iterator[tuple[str, str]]:
    """Yield ``(pid, text)``, rejecting a pid that appears twice with different texts."""
    text_hash_by_pid: dict[str, bytes] = {}  # ids and 8-byte hashes only, never texts
    for where, pid, text in _iter_table(source, split, ID_COLUMNS, TEXT_COLUMNS):
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
        previous = text_hash_by_pid.get(pid)
        if previous is not None:
            if previous != digest:
                raise DataError(f"{where}: pid {pid} appears twice with different texts")
            continue  # an exact duplicate row: keep the first
        text_hash_by_pid[pid] = digest
        yield pid, text


def _prepare_from_tables(config: DataConfig, out_dir: Path) -> PreparedData:
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
        judged: list[tuple[int, str, str, int]] = []
        for line_number, qid, pid, relevance in iter_trec_qrels(config.qrels):
            if qid not in query_ids:
                raise DataError(
                    f"{config.qrels}, line {line_number}: qid {qid} is not in {config.queries}"
                )
            judged.append((line_number, qid, pid, relevance))
        if not judged:
            raise DataError(f"{config.qrels}: no judgements")
        judged_pids = {pid for _, _, pid, _ in judged}
        found: set[str] = set()
        for pid, text in _iter_corpus_table(config.corpus, config.split):
            corpus.add(pid, text)
            if pid in judged_pids:
                found.add(pid)
        for line_number, qid, pid, relevance in judged:
            if pid not in found:
                raise DataError(
                    f"{config.qrels}, line {line_number}: pid {pid} is not in {config.corpus}"
                )
            qrels.add(qid, pid, relevance)
    return PreparedData.from_writers(corpus, queries, qrels)


def prepare_data(config: DataConfig, out_dir: str | os.PathLike) -> PreparedData:
    """Read the sources of ``config`` and write ``corpus``, ``queries`` and ``qrels`` Parquet.

    Args:
        config: The data sources.
        out_dir: Directory for ``corpus.parquet``, ``queries.parquet`` and ``qrels.parquet``.

    Returns:
        The paths and row counts of the three tables.

    Raises:
        DataError: a one-line message naming the file and row of the first bad input. No
            table is left behind.
    """
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.dataset is not None:
        prepared = _prepare_from_dataset(config, out)
    else:
        prepared = _prepare_from_tables(config, out)
    if prepared.num_corpus == 0:
        raise DataError(f"{config.corpus or config.dataset}: the corpus is empty")
    return prepared


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """Read a normalized qrels table into ``{qid: {pid: relevance}}``."""
    table = pq.read_table(path, schema=QRELS_SCHEMA)
    qrels: dict[str, dict[str, int]] = {}
    for qid, pid, relevance in zip(*(table[c].to_pylist() for c in QRELS_SCHEMA.names)):
        qrels.setdefault(qid, {})[pid] = relevance
    return qrels
