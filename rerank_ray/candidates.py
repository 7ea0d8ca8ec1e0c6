"""Candidates: a ranking made elsewhere (``--candidates``), checked and made the run's
retrieval in place of the embed and retrieve stages.

A candidates file is a TREC run (``qid Q0 pid rank score tag``, read by
:mod:`rerank_ray.trec_run`) or a Parquet table (a file, or a directory of files, with
columns ``qid``, ``pid``, ``score`` and optionally ``rank``; ids may be strings or integers).
The rank is never used: each query's passages are ordered as trec_eval orders them, by score
compared as a 32-bit float, descending, ties by pid in descending byte order, so the
retrieval figures are trec_eval's on the same file. The order is cut to ``top_k`` passages
per query and written as ``retrieval.parquet`` (:data:`rerank_ray.ranking.RETRIEVAL_SCHEMA`;
its float32 score is the score trec_eval compares).

Bad input is refused in one line naming the file and line (or row): what the format
allows (:func:`read_candidates`, before Ray starts or any stage runs), then a (qid, pid)
given twice, then, against the run's prepared tables (:func:`check_known_ids`), a qid
that is not a query and a pid that is not in the corpus. The driver holds the candidates
(a table of ``queries x depth`` rows), never the corpus: the corpus's pids stream past in
chunks of :data:`CORPUS_CHUNK_ROWS`.

Example::

    candidates = read_candidates("bm25.trec")
    check_known_ids(candidates, prepared, data)  # the run's PreparedData and DataConfig
    write_retrieval(candidates, prepared, "RUN/retrieval.parquet", 100, sha256="sha256:…")
    # {'rows': ..., 'queries': ..., 'depth': 100, ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rerank_ray.beir import beir_files
from rerank_ray.datasets import DataConfig, PreparedData
from rerank_ray.errors import DataError
from rerank_ray.formats import check_file
from rerank_ray.io import atomic_path, is_dir, open_input
from rerank_ray.parquet import iter_parquet_batches, parquet_files, parquet_schema, write_table
from rerank_ray.ranking import rank_by_score
from rerank_ray.trec_run import read_trec_run

#: Corpus pids checked at a time against the candidates' pids.
CORPUS_CHUNK_ROWS = 1 << 20
_PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Candidates:
    """A candidates file as read: one row per candidate (``file``: index into ``files``,
    ``line``: its line or row there, ``qid``, ``pid``, ``score`` as float64), in file order.

    ``format`` is ``trec`` or ``parquet``; ``tags`` are a TREC run's tags (Parquet: none).
    """

    path: str
    format: str
    files: list[str]
    table: pa.Table
    tags: list[str]

    def where(self, index: int) -> str:
        """``FILE, line N`` (``row N`` for Parquet) of the candidate at ``index``."""
        file = self.files[self.table.column("file")[index].as_py()]
        unit = "line" if self.format == "trec" else "row"
        return f"{file}, {unit} {self.table.column('line')[index].as_py()}"

    def describe(self) -> dict:
        """What the manifest records about the file."""
        rows = self.table.num_rows
        return {"path": self.path, "format": self.format, "rows": rows, "tags": self.tags}


def is_parquet(path: str) -> bool:
    """Whether ``path`` is a Parquet table: a directory, or a file that starts as one."""
    if is_dir(path):
        return True
    check_file(path)
    with open_input(path) as handle:
        return handle.read(len(_PARQUET_MAGIC)) == _PARQUET_MAGIC


def read_candidates(path: str) -> Candidates:
    """Read and check a candidates file (TREC run or Parquet, told apart by content).

    Raises:
        DataError: what :func:`rerank_ray.trec_run.read_trec_run` refuses; for Parquet, a
            missing column, ids that are neither strings nor integers, a score that is not a
            number, an empty or non-finite value; for both, a (qid, pid) given twice. Each
            names the file and line or row.
    """
    if is_parquet(path):
        candidates = _read_parquet(path)
    else:
        run = read_trec_run(path)
        table = run.table.add_column(0, "file", pa.array(np.zeros(run.table.num_rows, np.int32)))
        candidates = Candidates(path, "trec", [path], table, run.tags)
    _refuse_repeats(candidates)
    return candidates


def _read_parquet(path: str) -> Candidates:
    files = parquet_files(path)
    if not files:
        raise DataError(f"{path}: no .parquet files")
    batches = []
    for index, file in enumerate(files):
        schema = parquet_schema(file)
        for name, allowed in (("qid", _is_id), ("pid", _is_id), ("score", _is_number)):
            if name not in schema.names:
                raise DataError(f"{file}: missing column '{name}' (columns qid, pid, score)")
            kind = schema.field(name).type
            if not allowed(kind):
                wanted = "strings or integers" if name != "score" else "numbers"
                raise DataError(f"{file}: column '{name}' must hold {wanted}, not {kind}")
        row = 0
        for batch in iter_parquet_batches(file, columns=["qid", "pid", "score"]):
            for name in ("qid", "pid", "score"):
                column = batch.column(name)
                if column.null_count:
                    first = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
                    raise DataError(f"{file}, row {row + first + 1}: {name} is empty")
            scores = batch.column("score").cast(pa.float64()).to_numpy(zero_copy_only=False)
            if not np.isfinite(scores).all():
                first = int(np.argmax(~np.isfinite(scores)))
                raise DataError(
                    f"{file}, row {row + first + 1}: score {scores[first]} is not a finite number"
                )
            lines = np.arange(row + 1, row + batch.num_rows + 1, dtype=np.int64)
            batches.append(
                pa.table(
                    {
                        "file": pa.array(np.full(batch.num_rows, index, np.int32)),
                        "line": pa.array(lines),
                        "qid": batch.column("qid").cast(pa.string()),
                        "pid": batch.column("pid").cast(pa.string()),
                        "score": pa.array(scores),
                    }
                )
            )
            row += batch.num_rows
    if not batches or sum(b.num_rows for b in batches) == 0:
        raise DataError(f"{path}: no rows")
    return Candidates(path, "parquet", files, pa.concat_tables(batches), [])


def _is_id(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _refuse_repeats(candidates: Candidates) -> None:
    """Refuse a (qid, pid) given twice, naming the first repeat in file order and the line
    it repeats (found by a sort, not a dictionary of every pair)."""
    table = candidates.table
    if table.num_rows < 2:
        return
    keys = [(name, "ascending") for name in ("qid", "pid", "file", "line")]
    order = pc.sort_indices(table, sort_keys=keys)
    qids = table.column("qid").take(order)
    pids = table.column("pid").take(order)
    same = pc.and_(
        pc.equal(qids.slice(1), qids.slice(0, len(order) - 1)),
        pc.equal(pids.slice(1), pids.slice(0, len(order) - 1)),
    ).to_numpy(zero_copy_only=False)
    if not same.any():
        return
    order = order.to_numpy()
    repeats = order[np.nonzero(same)[0] + 1]  # table rows that repeat an earlier row
    # Table rows are in file order: the smallest index is the first repeat in the file.
    first_repeat = int(repeats.min())
    position = int(np.nonzero(order == first_repeat)[0][0])
    while position > 0 and same[position - 1]:
        position -= 1  # back to the group's first row: the earliest occurrence
    earlier = int(order[position])
    qid, pid = table.column("qid")[first_repeat].as_py(), table.column("pid")[first_repeat].as_py()
    here, there = candidates.where(first_repeat), candidates.where(earlier)
    if here.rpartition(", ")[0] == there.rpartition(", ")[0]:
        there = there.rpartition(", ")[2]  # the same file: its line is enough
    raise DataError(f"{here}: qid {qid}, pid {pid} appears twice (first at {there})")


def check_known_ids(candidates: Candidates, prepared: PreparedData, data: DataConfig) -> None:
    """Refuse a candidate whose qid is not one of the run's queries or whose pid is not in
    its corpus, naming the first such line of the file.

    Args:
        candidates: From :func:`read_candidates`.
        prepared: The run's normalized tables; the corpus's pids are streamed in chunks.
        data: The sources, to name the corpus and queries as the user gave them.
    """
    table = candidates.table
    corpus_name = data.corpus or f"the corpus (positives of {data.dataset})"
    queries_name = data.queries or f"the queries of {data.dataset}"
    if data.beir is not None:
        corpus_name, queries_name, _ = beir_files(data.beir, data.beir_split)
    queries = pa.concat_arrays(
        [b.column("qid") for b in iter_parquet_batches(prepared.queries_path, columns=["qid"])]
    )
    known = pc.is_in(table.column("qid"), value_set=queries)
    if not pc.all(known).as_py():
        first = _first_false(known)
        qid = table.column("qid")[first].as_py()
        raise DataError(f"{candidates.where(first)}: qid {qid} is not in {queries_name}")
    pids = pc.unique(table.column("pid"))
    found = np.zeros(len(pids), dtype=bool)
    for chunk in _pid_chunks(prepared.corpus_path):
        found |= pc.is_in(pids, value_set=chunk).to_numpy(zero_copy_only=False)
        if found.all():
            return
    unknown = pids.filter(pa.array(~found))
    first = _first_false(pc.invert(pc.is_in(table.column("pid"), value_set=unknown)))
    pid = table.column("pid")[first].as_py()
    raise DataError(f"{candidates.where(first)}: pid {pid} is not in {corpus_name}")


def _first_false(mask) -> int:
    return int(np.argmin(mask.to_numpy(zero_copy_only=False)))


def _pid_chunks(corpus_path: str):
    """The corpus's pids, :data:`CORPUS_CHUNK_ROWS` at a time."""
    pending, rows = [], 0
    for batch in iter_parquet_batches(corpus_path, columns=["pid"]):
        pending.append(batch.column("pid"))
        rows += batch.num_rows
        if rows >= CORPUS_CHUNK_ROWS:
            yield pa.concat_arrays(pending)
            pending, rows = [], 0
    if pending:
        yield pa.concat_arrays(pending)


def rank_like_trec_eval(candidates: Candidates, top_k: int) -> pa.Table:
    """The candidates ranked per query as trec_eval ranks them, cut to ``top_k`` a query:
    a :data:`~rerank_ray.ranking.RETRIEVAL_SCHEMA` table, ordered by qid and rank.

    Scores are compared as float32 (what trec_eval stores; distinct float64 scores can tie
    there) with ``-0.0`` equal to ``0.0``; ties go to the pid that sorts last byte by byte.
    """
    table = candidates.table
    with np.errstate(over="ignore"):  # a score beyond float32 becomes infinite, as in C
        scores = table.column("score").to_numpy().astype(np.float32)
    rows = pa.table({"qid": table.column("qid"), "pid": table.column("pid"), "score": scores})
    return rank_by_score(rows, top_k, ties="descending")


def write_retrieval(
    candidates: Candidates, prepared: PreparedData, output_path: str, top_k: int, sha256: str
) -> dict:
    """Rank the candidates (:func:`rank_like_trec_eval`) into ``output_path``, atomically.

    Returns:
        The stage's statistics: ``rows`` written, ``queries`` ranked, the prepared queries
        ``queries_without_candidates``, ``depth`` (the most passages a query has), ``top_k``
        and the ``candidates`` file (:meth:`Candidates.describe` and its ``sha256``).
    """
    ranked = rank_like_trec_eval(candidates, top_k)
    with atomic_path(output_path) as tmp:
        write_table(ranked, tmp)
    queries = len(pc.unique(ranked.column("qid")))
    return {
        "rows": ranked.num_rows,
        "queries": queries,
        "queries_without_candidates": prepared.num_queries - queries,
        "depth": int(pc.max(ranked.column("rank")).as_py()),
        "top_k": top_k,
        "candidates": {**candidates.describe(), "sha256": sha256},
    }
