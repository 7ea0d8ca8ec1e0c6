"""Sources → normalized Parquet tables: ``corpus``, ``queries`` and ``qrels``.

Every source is read lazily, row by row or batch by batch, and written to Parquet as it is
read, so preparing data never holds a whole corpus in memory. Bad input raises
:class:`DataError` with a one-line message naming the file and the row, before any model is
loaded.

Three source layouts are understood:

* the schema of the Hugging Face dataset ``namespace-Pt/msmarco`` (``query: str``,
  ``positive: list[str]``), from the Hub or a local ``.jsonl`` / ``.json`` / ``.parquet``
  file: the corpus is the unique positives of the first ``corpus_rows`` rows, the queries
  are the first ``num_queries`` rows and the qrels come from the positives;
* the official MS MARCO layout: ``collection.tsv`` (``pid\\ttext``), ``queries.tsv``
  (``qid\\ttext``) and TREC qrels (``qid 0 pid rel``). The corpus may also be a
  Parquet / JSONL / Hub table (text column ``text``, ``content`` or ``passage``; without an
  id column, each passage's id is :func:`rerank_ray.formats.passage_id` of its text),
  combined with ``--dataset`` whose positives are then matched into it by exact text;
* a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), read by
  :mod:`rerank_ray.beir`.

A separate corpus table is written as it streams, then checked by
:func:`rerank_ray.corpus_check.check_corpus`, a Ray Data job (broadcast join with the
positives or judged pids, sort by pid), so neither the matching nor the duplicate-id check
holds the corpus's ids in the driver.

This module holds the configuration and the first two layouts; the source formats are read by
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from rerank_ray.corpus_check import CorpusRows, write_checked_corpus
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
from rerank_ray.tables import ID_COLUMNS, TEXT_COLUMNS, iter_table, table_writers


@dataclass(frozen=True)
class DataConfig:
    """Where the evaluation data comes from.

    Args:
        dataset: A ``namespace-Pt/msmarco``-schema source: a Hub name or a local
            ``.jsonl`` / ``.json`` / ``.parquet`` file.
        split: The split of a Hub dataset (``None``: ``dev``) or of a BEIR folder's qrels
            (``None``: ``test``).
        corpus_rows: The corpus is the unique positives of the first ``corpus_rows`` rows of
            ``dataset`` (all rows when ``None``). Ignored when ``corpus`` is given.
        num_queries: The first ``num_queries`` rows of ``dataset`` are the queries (all rows
            when ``None``).
        corpus: A corpus table: MS MARCO ``collection.tsv``, Parquet, JSONL or a Hub name.
        queries: MS MARCO ``queries.tsv`` (or a Parquet / JSONL table with ``qid``, ``text``).
        qrels: TREC qrels (``qid 0 pid rel``).
        beir: A BEIR folder (:mod:`rerank_ray.beir`); excludes the other sources.
    """

    dataset: str | None = option(
        None,
        "--dataset",
        "namespace-Pt/msmarco schema: Hub name or .jsonl/.json/.parquet",
        metavar="SRC",
        path=True,
    )
    split: str | None = option(
        None,
        "--split",
        "split of a Hub dataset (default: dev) or of BEIR qrels (default: test)",
    )
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
    beir: str | None = option(
        None,
        "--beir",
        "BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv",
        metavar="DIR",
        path=True,
    )

    @property
    def hub_split(self) -> str:
        """The split of a Hub source: ``split``, else ``dev``."""
        return "dev" if self.split is None else self.split

    @property
    def beir_split(self) -> str:
        """The split of a BEIR folder's qrels: ``split``, else ``test`` (the default of BEIR's
        ``GenericDataLoader.load``)."""
        return "test" if self.split is None else self.split

    def validate(self) -> None:
        """Raise :class:`ConfigError` when the combination of sources makes no sense, and
        :class:`DataError` when a local source is missing."""
        for name in ("corpus_rows", "num_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}", DataConfig, name)
        if self.beir is not None:
            from rerank_ray.beir import validate_beir  # it builds on this module

            validate_beir(self)
            return
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
    for index, (where, record) in enumerate(iter_records(config.dataset, config.hub_split)):
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
    if qrels.rows == 0:
        raise DataError(_no_positives(config, queries.rows))


def _no_positives(config: DataConfig, num_queries: int) -> str:
    """The refusal of a ``dataset`` whose ``num_queries`` queries have no positive passage:
    metrics average over the queries that have one."""
    return (
        f"{config.dataset}: no query has a relevant passage (none of its {num_queries}"
        " queries has a positive)"
    )


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
    if not qids_by_text:
        raise DataError(_no_positives(config, rows))
    wanted = list(qids_by_text)
    passages = _corpus_rows(config.corpus, config.hub_split)
    matches = write_checked_corpus(corpus, passages, config.corpus, wanted, "text")
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


def _corpus_rows(source: str, split: str) -> CorpusRows:
    """The rows of a corpus table, read afresh at each call."""
    return lambda: iter_table(source, split, ID_COLUMNS, TEXT_COLUMNS, True)


def _prepare_from_tables(config: DataConfig, out_dir: str) -> PreparedData:
    # Queries and qrels are small: read and check them first, then stream the corpus once.
    with table_writers(out_dir) as (corpus, queries, qrels):
        query_ids: set[str] = set()
        query_names = ("qid", "id", "_id", "query_id")
        split = config.hub_split
        for where, qid, text in iter_table(config.queries, split, query_names, TEXT_COLUMNS):
            if qid in query_ids:
                raise DataError(f"{where}: qid {qid} appears twice")
            query_ids.add(qid)
            queries.add(qid, text)
        judged = read_judgements(
            config.qrels, iter_trec_qrels(config.qrels), config.queries, query_ids
        )
        rows = _corpus_rows(config.corpus, split)
        write_judged(corpus, qrels, rows, config.corpus, config.qrels, judged)
    return PreparedData.from_writers(corpus, queries, qrels)


def write_judged(corpus, qrels, rows: CorpusRows, corpus_name: str, qrels_path: str, judged):
    """Stream ``rows()`` into the checked ``corpus`` table, then the ``judged`` lines (from
    :func:`read_judgements`) into ``qrels``; a judged pid that is not in the corpus is refused,
    naming its line."""
    judged_pids = sorted({pid for _, _, pid, _ in judged})
    matches = write_checked_corpus(corpus, rows, corpus_name, judged_pids, "pid")
    found = {judged_pids[index] for index in matches}
    for line_number, qid, pid, relevance in judged:
        if pid not in found:
            raise DataError(f"{qrels_path}, line {line_number}: pid {pid} is not in {corpus_name}")
        qrels.add(qid, pid, relevance)


def read_judgements(
    path: str,
    lines: Iterable[tuple[int, str, str, int]],
    queries_path: str | None = None,
    query_ids: set[str] | None = None,
) -> list[tuple[int, str, str, int]]:
    """The judgements of a qrels file, one per ``(qid, pid)``, in file order.

    ``lines`` are ``(line_number, qid, pid, relevance)`` as the file's reader yields them. A
    line that repeats an earlier ``(qid, pid)`` with the same relevance is dropped; with
    another relevance it is refused, as is, when ``query_ids`` is given, a qid not in them.
    Metrics average over the queries that have a relevant passage (grade >= 1), so a file
    without any is refused.

    Raises:
        DataError: naming the file and line (and the earlier line of a conflict).
    """
    first: dict[tuple[str, str], tuple[int, int]] = {}
    judged: list[tuple[int, str, str, int]] = []
    for line_number, qid, pid, relevance in lines:
        if query_ids is not None and qid not in query_ids:
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
    if all(relevance < 1 for _, _, _, relevance in judged):
        raise DataError(f"{path}: no query has a relevant passage (grade > 0)")
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
    if config.beir is not None:
        from rerank_ray.beir import prepare_beir  # it builds on this module

        return prepare_beir(config, out)
    if config.dataset is not None:
        prepared = _prepare_from_dataset(config, out)
    else:
        prepared = _prepare_from_tables(config, out)
    if prepared.num_corpus == 0:
        raise DataError(f"{config.corpus or config.dataset}: the corpus is empty")
    return prepared
