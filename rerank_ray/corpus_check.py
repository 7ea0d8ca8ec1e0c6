"""The distributed check of a corpus table, on Ray Data: its repeated pids, and the rows
that match the wanted positives or judged pids.

:func:`check_corpus` is one pass over the table (a broadcast join and a sort by pid), so
neither the matching nor the duplicate-id check holds the corpus's ids in the driver.
:func:`write_checked_corpus` streams a source's rows into the corpus table and checks it:
:mod:`rerank_ray.datasets` and :mod:`rerank_ray.beir` call it on each separate corpus they
prepare.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from rerank_ray.errors import DataError
from rerank_ray.parquet import read_dataset
from rerank_ray.raydata import iter_sorted_groups
from rerank_ray.tables import WRITE_BATCH_ROWS, TableWriter

log = logging.getLogger("rerank_ray")


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


#: ``(where, pid, text)`` of each row of a corpus source; each call reads the source afresh.
CorpusRows = Callable[[], Iterator[tuple[str, str, str]]]


def write_checked_corpus(
    corpus: TableWriter, rows: CorpusRows, name: str, wanted: list[str], match_on: str
) -> dict[int, list[str]]:
    """Stream ``rows()`` into ``corpus``, check its ids, and find the ``wanted`` passages.

    Args:
        corpus: The corpus table's writer.
        rows: The source's rows; read a second time only to name a conflicting row.
        name: The source as the user gave it, for messages.
        wanted: As :func:`check_corpus`'s.
        match_on: As :func:`check_corpus`'s.

    Returns:
        ``{index in wanted: [pid, ...]}`` for each wanted value found.

    Raises:
        DataError: a pid that appears twice with different texts, naming the second row.
            Exact duplicate rows are dropped (the first is kept).
    """
    for _where, pid, text in rows():
        corpus.add(pid, text)
    if corpus.rows == 0:
        return {}
    check = check_corpus(corpus.finish(), corpus.rows, wanted, match_on)
    if check.conflicting:
        raise DataError(_first_conflict(rows, name, check.conflicting))
    if check.repeated:
        corpus.keep_first_of(check.repeated)
    return check.matches


def _first_conflict(rows: CorpusRows, name: str, pids: set[str]) -> str:
    """The message for the first row that repeats one of ``pids`` with another text.

    Only runs when :func:`check_corpus` found such pids; it re-reads the source sequentially
    to name the row, holding only those pids.
    """
    first_digest: dict[str, bytes] = {}
    for where, pid, text in rows():
        if pid in pids:
            digest = text_digest(text)
            if first_digest.setdefault(pid, digest) != digest:
                return f"{where}: pid {pid} appears twice with different texts"
    return f"{name}: pids {', '.join(sorted(pids))} appear twice with different texts"


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
    digests = [int.from_bytes(text_digest(t), "little", signed=True) for t in texts.to_pylist()]
    return pa.table(
        {
            "pid": block.column("pid"),
            "digest": pa.array(digests, pa.int64()),
            "wanted": pc.fill_null(pc.index_in(probe, value_set=values), -1).cast(pa.int32()),
        }
    )


def text_digest(text: str) -> bytes:
    """An 8-byte digest of a passage's text: two texts of one pid differ when theirs do."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
