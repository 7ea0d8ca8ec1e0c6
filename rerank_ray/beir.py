"""The BEIR layout: a folder of ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``
(``--beir DIR``), read into the normalized tables as BEIR reads it (beir-cellar/beir).

* A passage is ``(title + " " + text).strip()``: the text BEIR's dense models embed
  (``extract_corpus_sentences`` in ``beir/retrieval/models/util.py``, SentenceBERT's ``sep``
  being ``" "``) and its reranker scores (``beir/reranking/rerank.py``). A missing or null
  title counts as empty, so an untitled passage is its text, stripped.
* The queries are the split's judged ones, in the order of their first judgement, as
  ``GenericDataLoader.load`` keeps only the queries of the qrels; a query's text is kept as
  written.
* The qrels' scores are the relevance: graded, and 0 is kept as a judged non-relevant
  passage (:func:`rerank_ray.formats.iter_beir_qrels` reads the file).
* The split is ``--split``, else ``test`` (``GenericDataLoader.load``'s default).

Where BEIR's dictionaries would silently keep the last of two rows, a one-line
:class:`DataError` names the file and line instead: an ``_id`` twice in the queries, or twice
in the corpus with different texts (an exact duplicate row is dropped), a ``(qid, pid)``
judged twice with different scores; so does a judgement whose qid or pid is missing.

The driver holds the qrels and the judged queries (as many as the split judges), never the
corpus: it streams into its table and is checked on Ray Data
(:func:`rerank_ray.corpus_check.write_checked_corpus`).

Example::

    from rerank_ray.datasets import DataConfig, prepare_data
    prepared = prepare_data(DataConfig(beir="beir/scifact"), "runs/scifact/data")
    prepared.num_queries  # the queries judged in qrels/test.tsv
    # 300
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from pyarrow.fs import FileType

from rerank_ray.datasets import DataConfig, PreparedData, read_judgements, write_judged
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.formats import check_file, iter_beir_qrels, iter_records
from rerank_ray.io import file_info, join
from rerank_ray.tables import table_writers

#: The options that name another layout's sources or sizes: none applies to a BEIR folder.
OTHER_SOURCES = ("dataset", "corpus", "queries", "qrels", "corpus_rows", "num_queries")


def beir_files(folder: str, split: str) -> tuple[str, str, str]:
    """The corpus, queries and qrels files of a BEIR folder for ``split``.

    Example:
        >>> corpus, queries, qrels = beir_files("s3://bucket/scifact", "test")
        >>> qrels
        's3://bucket/scifact/qrels/test.tsv'
    """
    qrels = join(folder, "qrels", f"{split}.tsv")
    return join(folder, "corpus.jsonl"), join(folder, "queries.jsonl"), qrels


def validate_beir(config: DataConfig) -> None:
    """Refuse another layout's options next to ``beir``, and a folder or file that is missing.

    Raises:
        ConfigError: naming the options, as fields of :class:`DataConfig`.
        DataError: naming the missing or empty folder or file.
    """
    given = [name for name in OTHER_SOURCES if getattr(config, name) is not None]
    if given:
        raise ConfigError(
            f"beir excludes {', '.join(given)}: the folder holds all the data",
            DataConfig,
            "beir",
            *given,
        )
    info = file_info(config.beir)
    if info.type == FileType.NotFound:
        raise DataError(f"{config.beir}: no such folder")
    if info.type != FileType.Directory:
        raise DataError(f"{config.beir}: not a folder (of corpus.jsonl, queries.jsonl, qrels/)")
    corpus, queries, qrels = beir_files(config.beir, config.beir_split)
    check_file(corpus)
    check_file(queries)
    if file_info(qrels).type == FileType.NotFound:
        raise DataError(f"{qrels}: no such file (the qrels of split {config.beir_split})")
    check_file(qrels)


def _identifier(record: object, where: str) -> str:
    if not isinstance(record, dict) or "_id" not in record:
        raise DataError(f"{where}: missing column '_id'")
    value = record["_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise DataError(f"{where}: column '_id' must be a non-empty string")
    return str(value)


def _string(record: dict, name: str, where: str, required: bool = True) -> str:
    value = record.get(name)
    if value is None and not required:
        return ""
    if name not in record and required:
        raise DataError(f"{where}: missing column '{name}'")
    if not isinstance(value, str):
        raise DataError(f"{where}: column '{name}' must be a string")
    return value


def iter_passages(path: str) -> Iterator[tuple[str, str, str]]:
    """Yield ``(where, pid, passage)`` from a BEIR ``corpus.jsonl``: the passage is
    ``(title + " " + text).strip()``, a missing or null title being empty."""
    for where, record in iter_records(path):
        pid = _identifier(record, where)
        title = _string(record, "title", where, required=False)
        text = _string(record, "text", where)
        yield where, pid, (title + " " + text).strip()


def _judged_queries(path: str, judged_qids: set[str]) -> dict[str, str]:
    """``{qid: text}`` of the judged queries of a BEIR ``queries.jsonl``; an ``_id`` that
    appears twice is refused."""
    seen: set[str] = set()
    texts: dict[str, str] = {}
    for where, record in iter_records(path):
        qid = _identifier(record, where)
        text = _string(record, "text", where)
        if qid in seen:
            raise DataError(f"{where}: qid {qid} appears twice")
        seen.add(qid)
        if qid in judged_qids:
            texts[qid] = text
    return texts


def prepare_beir(config: DataConfig, out_dir: str) -> PreparedData:
    """Write the normalized tables of the BEIR folder ``config.beir`` (split
    ``config.beir_split``) under ``out_dir``: small files first (qrels, queries), then the
    corpus, streamed once."""
    corpus_path, queries_path, qrels_path = beir_files(config.beir, config.beir_split)
    judged = read_judgements(qrels_path, iter_beir_qrels(qrels_path))
    first_line: dict[str, int] = {}  # qid → the line of its first judgement
    for line_number, qid, _pid, _relevance in judged:
        first_line.setdefault(qid, line_number)
    texts = _judged_queries(queries_path, set(first_line))
    for qid, line_number in first_line.items():
        if qid not in texts:
            raise DataError(f"{qrels_path}, line {line_number}: qid {qid} is not in {queries_path}")
    with table_writers(out_dir) as (corpus, queries, qrels):
        for qid in first_line:
            queries.add(qid, texts[qid])
        rows = functools.partial(iter_passages, corpus_path)
        write_judged(corpus, qrels, rows, corpus_path, qrels_path, judged)
    return PreparedData.from_writers(corpus, queries, qrels)
