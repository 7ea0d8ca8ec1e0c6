"""Reading the sources, format by format: JSONL, JSON, Parquet, the Hugging Face Hub, TSV,
TREC qrels and BEIR qrels.

Every reader streams (line by line, row group by row group, or from the Hub's streaming
mode) and names the file and row of bad input in a one-line :class:`DataError`. What the
rows mean (corpus, queries, judgements) is decided by :mod:`rerank_ray.tables` and
:mod:`rerank_ray.datasets`.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "queries.tsv")
    >>> _ = open(path, "w", encoding="utf-8").write("10\\tq ten\\n\\n11\\tq eleven\\n")
    >>> list(iter_tsv(path, ("qid", "text")))
    [(1, '10', 'q ten'), (3, '11', 'q eleven')]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator

from pyarrow.fs import FileType

from rerank_ray.errors import DataError
from rerank_ray.io import file_info, is_uri, open_binary, read_text
from rerank_ray.parquet import iter_parquet_batches

#: Suffixes of local sources: a name with one of them is a file, never a Hub dataset.
TABULAR_SUFFIXES = (".jsonl", ".json", ".parquet", ".tsv")


def passage_id(text: str) -> str:
    """A stable id for a passage known only by its text: a content hash.

    The same text gets the same id in every run, whatever ``corpus_rows`` is, so qrels and
    retrieval results of different runs can be compared.

    Example:
        >>> passage_id("hello")
        'p2cf24dba5fb0a30'
    """
    return "p" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:15]


def check_file(path: str) -> None:
    """Raise :class:`DataError` when ``path`` is missing, a directory or empty."""
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


def decode_line(raw: bytes, path: str, line_number: int) -> str:
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
    check_file(source)
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
            line = decode_line(raw, source, line_number).strip()
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
    check_file(path)
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = decode_line(raw, path, line_number).rstrip("\r\n")
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
    check_file(path)
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = decode_line(raw, path, line_number).strip()
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


#: The header line of a BEIR qrels file.
BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")


def iter_beir_qrels(path: str) -> Iterator[tuple[int, str, str, int]]:
    """Yield ``(line_number, qid, pid, relevance)`` from BEIR qrels (``qrels/<split>.tsv``).

    The first line is a header (``query-id``, ``corpus-id``, ``score``): BEIR's loader skips it
    unread, so a first line that is a judgement is refused rather than lost. Every other line
    has three tab-separated fields, the score an integer (graded; 0 is a judged non-relevant
    passage). Ids are taken as written. Blank lines, CRLF line ends and a byte-order mark at
    the start of the file are not data.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "test.tsv")
        >>> _ = open(path, "w").write("query-id\\tcorpus-id\\tscore\\nq1\\td7\\t2\\nq1\\td8\\t0\\n")
        >>> list(iter_beir_qrels(path))
        [(2, 'q1', 'd7', 2), (3, 'q1', 'd8', 0)]
    """
    check_file(path)
    header_seen = False
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = decode_line(raw, path, line_number).rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise DataError(
                    f"{path}, line {line_number}: expected 3 tab-separated fields"
                    f" ({', '.join(BEIR_QRELS_HEADER)}), got {len(fields)}"
                )
            score = _integer(fields[2])
            if not header_seen:
                header_seen = True
                if score is not None:
                    raise DataError(
                        f"{path}, line {line_number}: expected the header line"
                        f" ({', '.join(BEIR_QRELS_HEADER)}), got a judgement"
                    )
                continue
            for name, value in zip(BEIR_QRELS_HEADER, fields):
                if not value.strip():
                    raise DataError(f"{path}, line {line_number}: empty {name}")
            if score is None:
                raise DataError(
                    f"{path}, line {line_number}: score {fields[2]!r} is not an integer"
                )
            yield line_number, fields[0], fields[1], score


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
