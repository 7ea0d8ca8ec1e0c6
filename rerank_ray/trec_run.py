"""TREC run files: ``qid Q0 docno rank score tag``, one line per ranked passage, the format
trec_eval reads and writes.

Reading (:func:`read_trec_run`) streams the file and keeps what a ranking needs: the qid,
the docno (a pid here), the score, and the line each came from, so later checks can name it.
Fields are separated by whitespace, exactly six a line; blank lines, CRLF line ends and a
UTF-8 byte-order mark at the start of the file are not data. The second field (``Q0``) and
the rank are not used, as trec_eval does not use them: it orders a query's passages by
score, compared as 32-bit floats, and breaks ties by docno in descending byte order
(``comp_sim_docno`` in trec_eval's ``form_res_rels.c``). That order is
:mod:`rerank_ray.candidates`' business, not this module's.

Writing (:func:`write_trec_run`) restates a ranking: ranks from 1, ``Q0``, and a score that
decreases strictly with the rank (the number of passages ranked for the query, minus the
rank, plus 1), so trec_eval, whatever its tie rule, reads back exactly the written order.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "run.trec")
    >>> write_trec_run(path, {"q1": ["p7", "p3"]}, tag="bm25")
    2
    >>> print(open(path).read(), end="")
    q1 Q0 p7 1 2 bm25
    q1 Q0 p3 2 1 bm25
    >>> run = read_trec_run(path)
    >>> run.table.to_pydict(), run.tags
    ({'line': [1, 2], 'qid': ['q1', 'q1'], 'pid': ['p7', 'p3'], 'score': [2.0, 1.0]}, ['bm25'])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from rerank_ray.errors import DataError
from rerank_ray.formats import check_file, decode_line
from rerank_ray.io import atomic_path, open_binary, open_output

#: What a run's line holds, for messages.
FIELDS = "qid Q0 pid rank score tag"
#: The columns :func:`read_trec_run` returns: the line number, the ids and the score as read.
RUN_SCHEMA = pa.schema(
    [("line", pa.int64()), ("qid", pa.string()), ("pid", pa.string()), ("score", pa.float64())]
)
#: Distinct tags kept from a file (a run usually has one; they only name the run).
MAX_TAGS = 10
_BATCH_LINES = 65_536


@dataclass(frozen=True)
class TrecRun:
    """A TREC run as read: one row per line (:data:`RUN_SCHEMA`, file order) and its tags."""

    path: str
    table: pa.Table
    tags: list[str]


def parse_score(text: str, where: str) -> float:
    """A score field as a finite number.

    Raises:
        DataError: not a number (``abc``, ``1_0``, which C's ``atof`` would read otherwise),
            or not finite (``nan``, ``inf``: they have no place in an order).
    """
    try:
        value = float(text) if "_" not in text else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: score {text!r} is not a finite number")
    return value


def read_trec_run(path: str) -> TrecRun:
    """Read a TREC run: every line's qid, pid and score, in file order.

    Raises:
        DataError: a missing or empty file, a file without a ranked line, a line without
            exactly six fields, a score that is not a finite number, or bytes that are not
            UTF-8, naming the file and line.
    """
    check_file(path)
    batches: list[pa.RecordBatch] = []
    columns: tuple[list, list, list, list] = ([], [], [], [])
    tags: dict[str, None] = {}

    def flush() -> None:
        if columns[0]:
            batches.append(pa.RecordBatch.from_arrays(list(columns), schema=RUN_SCHEMA))
            for column in columns:
                column.clear()

    lines, qids, pids, scores = columns
    with open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            fields = decode_line(raw, path, line_number).split()
            if not fields:
                continue
            if len(fields) != 6:
                raise DataError(
                    f"{path}, line {line_number}: expected 6 fields '{FIELDS}', got {len(fields)}"
                )
            scores.append(parse_score(fields[4], f"{path}, line {line_number}"))
            lines.append(line_number)
            qids.append(fields[0])
            pids.append(fields[2])
            if len(tags) < MAX_TAGS:
                tags.setdefault(fields[5])
            if len(lines) == _BATCH_LINES:
                flush()
    flush()
    if not batches:
        raise DataError(f"{path}: no ranked lines ('{FIELDS}')")
    return TrecRun(path, pa.Table.from_batches(batches, schema=RUN_SCHEMA), list(tags))


def run_tag(name: str) -> str:
    """A run tag (one field, no whitespace) naming a system, e.g. a model's name.

    Example:
        >>> run_tag("BAAI/bge-m3"), run_tag("/models/my reranker")
        ('BAAI/bge-m3', '/models/my_reranker')
    """
    return "_".join(name.split()) or "run"


def write_trec_run(path: str, rankings: Mapping[str, Sequence[str]], tag: str) -> int:
    """Write ``{qid: [pid, ...]}`` (best first) as a TREC run at ``path``, atomically.

    Queries are written in the mapping's order; each gets ranks from 1 and the scores
    described in the module docstring. Returns the number of lines.

    Raises:
        DataError: an id or the tag is empty or holds whitespace (a field of a TREC run
            cannot), naming it; nothing is written.
    """
    for name, value in [("tag", tag), *(("qid", qid) for qid in rankings)]:
        _refuse_whitespace(path, name, value)
    written = 0
    with atomic_path(path) as tmp, open_output(tmp) as handle:
        chunk: list[str] = []
        for qid, pids in rankings.items():
            count = len(pids)
            for rank, pid in enumerate(pids, start=1):
                _refuse_whitespace(path, "pid", pid)
                chunk.append(f"{qid} Q0 {pid} {rank} {count - rank + 1} {tag}\n")
            written += count
            if len(chunk) >= _BATCH_LINES:
                handle.write("".join(chunk).encode("utf-8"))
                chunk.clear()
        handle.write("".join(chunk).encode("utf-8"))
    return written


_WHITESPACE = re.compile(r"\s")


def _refuse_whitespace(path: str, name: str, value: str) -> None:
    if not value or _WHITESPACE.search(value):
        raise DataError(f"{path}: {name} {value!r} is empty or holds whitespace (one field)")
