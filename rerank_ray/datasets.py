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
  id column, each passage's id is :func:`rerank_ray.formats.passage_id` of its text),
  combined with ``--dataset`` whose positives are then matched into it by exact text.

A separate corpus table is written as it streams, then checked by
:func:`rerank_ray.corpus_check.check_corpus`, a Ray Data job (broadcast join with the
positives or judged pids, sort by pid), so neither the matching nor the duplicate-id check
holds the corpus's ids in the driver.

This module holds the configuration and the two layouts; the source formats are read by
:mod:`rerank_ray.formats`, the tables are written by :mod:`rerank_ray.tables`, and the
corpus is checked by :mod:`rerank_ray.corpus_check`.

Example::

    from rerank_ray.datasets import DataConfig, prepare_data
    config = DataConfig(dataset="dev.jsonl", corpus_rows=5000, num_queries=100)
    prepared = prepare_data(config, "runs/seed/data")
    prepared.num_corpus
    # 5000
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from rerank_ray.corpus_check import check_corpus, text_digest
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.formats import (
    check_file,
    is_local_source,
    iter_records,
    iter_trec_qrels,
    passage_id,
)
from rerank_ray.io import absolute, makedirs
from rerank_ray.options import option
from rerank_ray.tables import (
    ID_COLUMNS,
    TEXT_COLUMNS,
    TableWriter,
    iter_table,
    table_writers,
)


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
                check_file(source)


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


def _prepare_from_dataset(config: DataConfig, out_dir: str) -> PreparedData:
    with table_writers(out_dir) as (corpus, queries, qrels):
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


def _write_checked_corpus(
    corpus: TableWriter, source: str, split: str, wanted: list[str], match_on: str
) -> dict[int, list[str]]:
    """Stream ``source`` into ``corpus``, check its ids, and find the ``wanted`` passages.

    Returns:
        ``{index in wanted: [pid, ...]}`` for each wanted value found.

    Raises:
        DataError: a pid that appears twice with different texts, naming the second row.
            Exact duplicate rows are dropped (the first is kept).
    """
    for _where, pid, text in iter_table(source, split, ID_COLUMNS, TEXT_COLUMNS, True):
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
    for where, pid, text in iter_table(source, split, ID_COLUMNS, TEXT_COLUMNS, True):
        if pid in pids:
            digest = text_digest(text)
            if first_digest.setdefault(pid, digest) != digest:
                return f"{where}: pid {pid} appears twice with different texts"
    return f"{source}: pids {', '.join(sorted(pids))} appear twice with different texts"


def _prepare_from_tables(config: DataConfig, out_dir: str) -> PreparedData:
    # Queries and qrels are small: read and check them first, then stream the corpus once.
    with table_writers(out_dir) as (corpus, queries, qrels):
        query_ids: set[str] = set()
        query_names = ("qid", "id", "_id", "query_id")
        for where, qid, text in iter_table(config.queries, config.split, query_names, TEXT_COLUMNS):
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
