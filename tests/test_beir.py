"""The BEIR layout (``--beir DIR``): the tables a small folder gives, a run on it against
pytrec_eval, and each kind of bad input in one line naming the file and line."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import pytrec_eval

from rerank_ray.beir import beir_files
from rerank_ray.cli import main
from rerank_ray.config import RunConfig
from rerank_ray.datasets import DataConfig, prepare_data
from rerank_ray.errors import ConfigError, DataError
from rerank_ray.inputs import RunInputs
from rerank_ray.tables import read_qrels

# The corpus is checked on Ray Data (check_corpus): one Ray for the session.
pytestmark = pytest.mark.usefixtures("ray_session")

#: ``(_id, title, text)``; a title of ``None`` is left out of the record.
PASSAGES = [
    ("d1", "Photosynthesis", "Plants turn sunlight, water and carbon dioxide into sugar."),
    ("d2", "Chlorophyll", "The green pigment that absorbs light in leaves."),
    ("d3", "", "Roots take up water and minerals from the soil."),
    ("d4", "Volcano", "Magma rises through the crust and erupts as lava."),
    ("d5", "Tides", "The moon's gravity pulls the oceans into two bulges."),
    ("d6", "", "  High and low tides alternate about every six hours.  "),
    ("d7", None, "Bees carry pollen between flowers while feeding on nectar."),
    ("d8", "Honey", "Bees store nectar as honey in wax combs."),
    ("d9", "Glaciers", "Ice sheets carve valleys as they slowly move downhill."),
    ("d10", "Earthquakes", "Plates slip along faults and shake the ground."),
    ("d11", "Rainbows", "Sunlight splits into colours inside raindrops."),
    ("d12", "  Deserts ", "Little rain falls, and days are hot while nights are cold."),
]
#: ``(_id, text)``: q5 has no judgement in the test split.
QUERIES = [
    ("q1", "how do plants make food from light"),
    ("q2", "what happens when a volcano erupts"),
    ("q3", "what causes ocean tides"),
    ("q4", "how do bees make honey"),
    ("q5", "why is the sky blue"),
]
#: The test split, in file order: graded, with judged non-relevant (0) passages; q3 is
#: judged before q2, so the queries' order (their first judgement's) differs from the file's.
TEST_QRELS = [
    ("q1", "d1", 2), ("q1", "d2", 1), ("q1", "d3", 0), ("q3", "d5", 2), ("q3", "d6", 1),
    ("q2", "d4", 1), ("q2", "d10", 0), ("q4", "d8", 2), ("q4", "d7", 1),
]  # fmt: skip
TRAIN_QRELS = [("q5", "d11", 1)]


def _passage(title, text):
    """BEIR's rule, written out: title and text joined by a space, then stripped."""
    return ((title or "") + " " + text).strip()


def _write_beir(folder, passages=None, queries=None, qrels=None, splits=None):
    """A BEIR folder; ``passages``/``queries``/``qrels`` given as text replace the files."""
    (folder / "qrels").mkdir(parents=True)
    if passages is None:
        records = [
            {"_id": pid, "text": text, **({} if title is None else {"title": title})}
            for pid, title, text in PASSAGES
        ]
        passages = "".join(json.dumps(r) + "\n" for r in records)
    if queries is None:
        queries = "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES)
    splits = splits or {"test": TEST_QRELS, "train": TRAIN_QRELS}
    (folder / "corpus.jsonl").write_text(passages, encoding="utf-8")
    (folder / "queries.jsonl").write_text(queries, encoding="utf-8")
    for split, rows in splits.items():
        text = qrels if qrels is not None and split == "test" else _qrels_text(rows)
        (folder / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return str(folder)


def _qrels_text(rows):
    return "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{p}\t{s}\n" for q, p, s in rows)


def test_a_beir_folder_gives_exactly_the_expected_tables(tmp_path):
    folder = _write_beir(tmp_path / "beir")
    prepared = prepare_data(DataConfig(beir=folder), tmp_path / "out")
    corpus = pq.read_table(prepared.corpus_path).to_pylist()
    assert corpus == [{"pid": p, "text": _passage(title, text)} for p, title, text in PASSAGES]
    assert corpus[2]["text"] == "Roots take up water and minerals from the soil."  # "" title
    assert corpus[5]["text"] == "High and low tides alternate about every six hours."
    assert corpus[6]["text"] == PASSAGES[6][2]  # no title
    assert corpus[11]["text"].startswith("Deserts  Little rain")  # the title kept as written
    texts = dict(QUERIES)
    assert pq.read_table(prepared.queries_path).to_pylist() == [
        {"qid": q, "text": texts[q]}
        for q in ("q1", "q3", "q2", "q4")  # q5: not judged
    ]
    assert pq.read_table(prepared.qrels_path).to_pylist() == [
        {"qid": q, "pid": p, "relevance": r} for q, p, r in TEST_QRELS
    ]
    assert (prepared.num_corpus, prepared.num_queries, prepared.num_qrels) == (12, 4, 9)


def test_split_picks_the_qrels_file_and_defaults_to_test(tmp_path):
    folder = _write_beir(tmp_path / "beir")
    assert DataConfig(beir=folder).beir_split == "test"
    assert DataConfig(beir=folder).hub_split == "dev"
    train = prepare_data(DataConfig(beir=folder, split="train"), tmp_path / "train")
    assert pq.read_table(train.queries_path).to_pylist() == [
        {"qid": "q5", "text": "why is the sky blue"}
    ]
    assert read_qrels(train.qrels_path) == {"q5": {"d11": 1}}
    # The run's prepare key hashes the three files of the split, not the folder.
    inputs = RunInputs(RunConfig(out=str(tmp_path / "run"), data=DataConfig(beir=folder)), {})
    assert list(inputs.source_hashes()) == list(beir_files(folder, "test"))


def test_exact_duplicate_passages_count_once(tmp_path):
    line = json.dumps({"_id": "d1", "title": "T", "text": "x"}) + "\n"
    folder = _write_beir(
        tmp_path / "beir",
        passages=line + line + json.dumps({"_id": "d2", "text": "y"}) + "\n",
        qrels=_qrels_text([("q1", "d1", 1), ("q1", "d1", 1), ("q2", "d2", 0)]),
    )
    prepared = prepare_data(DataConfig(beir=folder), tmp_path / "out")
    assert pq.read_table(prepared.corpus_path).to_pylist() == [
        {"pid": "d1", "text": "T x"},
        {"pid": "d2", "text": "y"},
    ]
    assert read_qrels(prepared.qrels_path) == {"q1": {"d1": 1}, "q2": {"d2": 0}}


def _pytrec(run: dict, qrels: dict, name: str) -> float:
    """A metric of the report (``recall@k``, ``mrr@k``, ``ndcg@k``) by pytrec_eval."""
    kind, k = name.split("@")
    if kind == "mrr":
        run = {q: dict(sorted(d.items(), key=lambda kv: -kv[1])[: int(k)]) for q, d in run.items()}
    measure, key = {
        "recall": (f"recall.{k}", f"recall_{k}"),
        "ndcg": (f"ndcg_cut.{k}", f"ndcg_cut_{k}"),
        "mrr": ("recip_rank", "recip_rank"),
    }[kind]
    values = pytrec_eval.RelevanceEvaluator(qrels, {measure}).evaluate(run)
    return float(np.mean([v[key] for v in values.values()]))


def test_run_on_a_beir_folder_equals_pytrec_eval(tmp_path, capsys):
    """Ten of the twelve passages per query: deep enough for nDCG@10 on the graded qrels."""
    folder = _write_beir(tmp_path / "beir")
    out = tmp_path / "run"
    status = main(
        [
            "run", "--beir", folder, "--embedder", "minilm", "--reranker", "none",
            "--top-k", "10", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())["retrieval"]
    qrels: dict = {}
    for qid, pid, relevance in TEST_QRELS:
        qrels.setdefault(qid, {})[pid] = relevance
    assert read_qrels(str(out / "data" / "qrels.parquet")) == qrels
    run: dict = {}
    for row in pq.read_table(out / "retrieval.parquet").to_pylist():
        # Scores from ranks: trec_eval breaks score ties its own way; ranks are the truth.
        run.setdefault(row["qid"], {})[row["pid"]] = 1000.0 - row["rank"]
    assert sorted(run) == ["q1", "q2", "q3", "q4"] and all(len(d) == 10 for d in run.values())
    assert set(metrics) == {"recall@1", "recall@10", "mrr@1", "mrr@10", "ndcg@10"}
    for name, value in metrics.items():
        assert value == pytest.approx(_pytrec(run, qrels, name), abs=1e-12), name


BAD = [
    (
        {"passages": '{"_id": "d1", "text": "a"}\n{"title": "t", "text": "b"}\n'},
        "corpus.jsonl, line 2: missing column '_id'",
    ),
    (
        {"passages": '{"_id": "d1", "text": "a"}\n{not json\n'},
        "corpus.jsonl, line 2: not valid JSON",
    ),
    ({"passages": '{"_id": "d1", "title": "t"}\n'}, "corpus.jsonl, line 1: missing column 'text'"),
    (
        {"passages": '{"_id": "d1", "title": 3, "text": "a"}\n'},
        "corpus.jsonl, line 1: column 'title' must be a string",
    ),
    ({"passages": '{"_id": "", "text": "a"}\n'}, "corpus.jsonl, line 1: column '_id' must be"),
    (
        {"passages": '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'},
        "corpus.jsonl, line 2: pid d1 appears twice with different texts",
    ),
    ({"queries": '{"text": "a"}\n'}, "queries.jsonl, line 1: missing column '_id'"),
    (
        {"queries": '{"_id": "q1", "text": "a"}\n\n{"_id": "q1", "text": "b"}\n'},
        "queries.jsonl, line 3: qid q1 appears twice",
    ),
    (
        {"qrels": "query-id\tcorpus-id\tscore\nq1\td1\n"},
        "test.tsv, line 2: expected 3 tab-separated",
    ),
    (
        {"qrels": "query-id\tcorpus-id\tscore\nq1 d1 1\n"},
        "test.tsv, line 2: expected 3 tab-separated",
    ),
    ({"qrels": "q1\td1\t1\n"}, "test.tsv, line 1: expected the header line"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}, "line 2: score 'high' is not an"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\t\t1\n"}, "test.tsv, line 2: empty corpus-id"),
    ({"qrels": "query-id\tcorpus-id\tscore\n"}, "test.tsv: no judgements"),
    (
        {"qrels": _qrels_text([("q1", "d1", 1), ("q2", "d4", 1), ("q1", "d1", 2)])},
        "test.tsv, line 4: qid q1, pid d1 judged 2 here but 1 on line 2",
    ),
    (
        {"qrels": _qrels_text([("q1", "d1", 1), ("q9", "d4", 1)])},
        "test.tsv, line 3: qid q9 is not in ",
    ),
    (
        {"qrels": _qrels_text([("q1", "d1", 1), ("q2", "d99", 1)])},
        "test.tsv, line 3: pid d99 is not in ",
    ),
]


@pytest.mark.parametrize("files,message", BAD)
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, files, message):
    folder = _write_beir(tmp_path / "beir", **files)
    out = tmp_path / "out"
    with pytest.raises(DataError) as error:
        prepare_data(DataConfig(beir=folder), out)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(tmp_path / "beir") in str(error.value)
    left = os.listdir(out) if out.exists() else []
    assert not [name for name in left if name.endswith(".parquet") or name.startswith(".")]


def test_missing_folder_or_file_and_other_layouts_are_refused_up_front(tmp_path, capsys):
    folder = _write_beir(tmp_path / "beir")
    with pytest.raises(DataError, match="nope: no such folder"):
        DataConfig(beir=str(tmp_path / "nope")).validate()
    with pytest.raises(DataError, match="corpus.jsonl: not a folder"):
        DataConfig(beir=str(tmp_path / "beir" / "corpus.jsonl")).validate()
    with pytest.raises(DataError, match=r"qrels/dev.tsv: no such file \(the qrels of split dev\)"):
        DataConfig(beir=folder, split="dev").validate()
    os.remove(tmp_path / "beir" / "queries.jsonl")
    with pytest.raises(DataError, match="queries.jsonl: no such file"):
        DataConfig(beir=folder).validate()
    with pytest.raises(ConfigError, match="^beir excludes dataset, corpus_rows: the folder"):
        DataConfig(beir=folder, dataset="d.jsonl", corpus_rows=5).validate()
    code = main(["run", "--out", str(tmp_path / "r"), "--beir", folder, "--qrels", "q.tsv"])
    assert code == 2
    assert capsys.readouterr().err == (
        "rerank-ray: error: --beir excludes --qrels: the folder holds all the data\n"
    )
