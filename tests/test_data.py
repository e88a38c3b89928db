"""Loaders (BEIR, records), their one-line errors, the synthetic generator and passage splitting."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from medret.config import DataConfig
from medret.data import load_dataset, synthetic
from medret.data.clinical_vocab import CONDITIONS
from medret.data.passages import split_passages
from medret.errors import InputError

SECRET = "Patient Jane Roe has a confidential finding"


def write_beir(root: Path, corpus: list, queries: list, qrels: list[tuple], gz: bool = False) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in corpus)
    if gz:
        with gzip.open(root / "corpus.jsonl.gz", "wt") as fh:
            fh.write(lines)
    else:
        (root / "corpus.jsonl").write_text(lines)
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in qrels)
    )
    return root


CORPUS = [
    {"_id": "d1", "title": "T1", "text": "alpha"},
    {"_id": "d2", "text": "beta"},
    {"_id": "d3", "title": "", "text": "gamma"},
]
QUERIES = [{"_id": "q1", "text": "alpha?"}, {"_id": "q2", "text": "beta?"}, {"_id": "q3", "text": "none"}]
QRELS = [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "d3", 0)]


@pytest.mark.parametrize("gz", [False, True])
def test_beir_loads_title_and_text_and_keeps_judged_queries(tmp_path, gz):
    write_beir(tmp_path, CORPUS, QUERIES, QRELS, gz=gz)
    ds = load_dataset(DataConfig(name="beir", path=str(tmp_path)))
    assert ds.doc_ids == ["d1", "d2", "d3"]
    assert ds.doc_texts == ["T1 alpha", "beta", "gamma"]
    assert ds.query_ids == ["q1", "q2"]  # q3 has no judgement
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}


@pytest.mark.parametrize(
    "corpus, expected",
    [
        ([CORPUS[0], '{"_id": "d2", "text": ' + json.dumps(SECRET)], "corpus.jsonl:2: malformed JSON"),
        ([CORPUS[0], {"text": SECRET}], "corpus.jsonl:2: missing field '_id'"),
        ([CORPUS[0], {"_id": "d2", "body": SECRET}], "corpus.jsonl:2: missing field 'text'"),
        ([CORPUS[0], {"_id": "d1", "text": SECRET}], "corpus.jsonl:2: duplicate id 'd1' (first on line 1)"),
        ([], "empty corpus"),
    ],
)
def test_bad_corpus_gives_one_line_naming_file_and_line_without_text(tmp_path, corpus, expected):
    write_beir(tmp_path, corpus, QUERIES, QRELS)
    with pytest.raises(InputError) as err:
        load_dataset(DataConfig(name="beir", path=str(tmp_path)))
    msg = str(err.value)
    assert expected in msg and "\n" not in msg
    assert "Jane" not in msg and "confidential" not in msg


def test_unknown_qrels_are_counted_and_warned_or_fatal_when_strict(tmp_path, caplog):
    write_beir(tmp_path, CORPUS, QUERIES, [*QRELS, ("q1", "missing-doc", 1), ("q9", "d1", 1)])
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(DataConfig(name="beir", path=str(tmp_path)))
    assert ds.unknown_qrels == {"queries": 1, "docs": 1}
    assert "1 unknown query ids and 1 unknown doc ids" in caplog.text
    with pytest.raises(InputError, match="test.tsv: qrels name 1 unknown query ids"):
        load_dataset(DataConfig(name="beir", path=str(tmp_path), strict=True))


def test_bad_qrels_line_and_missing_folder(tmp_path):
    write_beir(tmp_path, CORPUS, QUERIES, QRELS)
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tyes\n")
    with pytest.raises(InputError, match=r"test.tsv:2: score must be an integer"):
        load_dataset(DataConfig(name="beir", path=str(tmp_path)))
    with pytest.raises(InputError, match="not a directory"):
        load_dataset(DataConfig(name="beir", path=str(tmp_path / "nope")))


def test_records_set_from_csv_and_jsonl(tmp_path):
    (tmp_path / "notes.csv").write_text("_id,title,text\nr1,Note,chest pain\nr2,,cough\n")
    (tmp_path / "q.jsonl").write_text(json.dumps({"_id": "a", "text": "pain"}) + "\n")
    (tmp_path / "qrels.tsv").write_text("a\tr1\t1\n")
    ds = load_dataset(
        DataConfig(
            name="records",
            corpus_file=str(tmp_path / "notes.csv"),
            queries_file=str(tmp_path / "q.jsonl"),
            qrels_file=str(tmp_path / "qrels.tsv"),
        )
    )
    assert ds.doc_texts == ["Note chest pain", "cough"] and ds.query_ids == ["a"]


def test_synthetic_is_deterministic_streaming_and_seeded():
    a = list(synthetic.iter_records(5, 60))
    b = list(synthetic.iter_records(5, 60))
    tail = list(synthetic.iter_records(5, 60, start=40))
    other = list(synthetic.iter_records(6, 60))
    assert [(i, t) for i, t, _ in a] == [(i, t) for i, t, _ in b]
    assert [t for _, t, _ in tail] == [t for _, t, _ in a[40:]]
    assert [t for _, t, _ in other] != [t for _, t, _ in a]


def test_synthetic_queries_categories_and_ground_truth_grades():
    cfg = DataConfig(name="synthetic", num_records=400, num_queries=80, seed=3)
    ds = load_dataset(cfg)
    assert set(ds.query_categories.values()) == set(synthetic.CATEGORIES)
    assert len(ds.query_ids) >= 75  # nearly every query has a relevant record by construction
    forms = {c.key: [f.lower() for f in c.forms] for c in CONDITIONS}
    queries = {q.qid: q for q in synthetic.make_queries(3, 400, 80, "test")}
    texts = dict(zip(ds.doc_ids, ds.doc_texts))
    for qid in ds.query_ids:
        q = queries[qid]
        for rid, grade in ds.qrels[qid].items():
            note = texts[rid].lower()
            assessment = note.split("assessment:")[1]
            hpi = note.split("hpi:")[1].split("\n")[0]
            if grade == 2:  # primary problem: named in the HPI and the assessment
                assert any(f in assessment for f in forms[q.condition])
                assert any(f in hpi for f in forms[q.condition])
            else:
                assert grade == 1
                pmh = note.split("past medical history:")[1].split("\n")[0]
                assert any(f in pmh for f in forms[q.condition])
    # test and train splits ask different questions of the same corpus
    train = load_dataset(DataConfig(name="synthetic", num_records=400, num_queries=80, seed=3, split="train"))
    assert train.query_texts != ds.query_texts and list(train.doc_texts) == list(ds.doc_texts)
    assert train.corpus_fingerprint == ds.corpus_fingerprint  # one corpus cache serves both splits


def test_passages_are_exact_overlapping_slices(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    long = " ".join(f"the patient {w}" for w in "abcdefghijklmnopqrst")
    short = "no pain"
    p = split_passages([long, short], tok, tokens=16, stride=4)
    owners = p.doc_index.tolist()
    assert owners[-1] == 1 and p.texts[-1] == short and owners.count(0) >= 3
    pieces = [t for t, o in zip(p.texts, owners) if o == 0]
    assert all(t in long for t in pieces) and pieces[0].startswith("the") and long.endswith(pieces[-1])
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) <= 16 for t in pieces)
    with pytest.raises(InputError, match="passage_stride"):
        split_passages([long], tok, tokens=8, stride=8)


def test_query_category_field_fills_categories_from_a_dotted_path(tmp_path, caplog):
    queries = [
        {"_id": "q1", "text": "alpha?", "metadata": {"qtype": "symptoms", "rank": 3}},
        {"_id": "q2", "text": "beta?", "metadata": {"qtype": "treatment"}},
        {"_id": "q3", "text": "none", "metadata": {}},
    ]
    write_beir(tmp_path, CORPUS, queries, QRELS)
    ds = load_dataset(DataConfig(name="beir", path=str(tmp_path), query_category_field="metadata.qtype"))
    assert ds.query_categories == {"q1": "symptoms", "q2": "treatment"}
    with caplog.at_level(logging.WARNING):  # q3 lacks it: in no category, warned with its line
        load_dataset(DataConfig(name="beir", path=str(tmp_path), query_category_field="metadata.qtype"))
    assert "1 queries in" in caplog.text and "first on line 3" in caplog.text
    ds = load_dataset(DataConfig(name="beir", path=str(tmp_path), query_category_field="metadata.rank"))
    assert ds.query_categories == {"q1": "3"}
    assert load_dataset(DataConfig(name="beir", path=str(tmp_path))).query_categories == {}


@pytest.mark.parametrize(
    "field, expected",
    [
        ("metadata.qtyp", "queries.jsonl:1: no such field"),
        ("metadata", "queries.jsonl:1: the field is an object"),
        ("metadata..qtype", "expected a dotted field path"),
    ],
)
def test_bad_query_category_field_is_one_line_naming_option_and_file(tmp_path, field, expected):
    queries = [{"_id": "q1", "text": SECRET, "metadata": {"qtype": "symptoms"}}, {"_id": "q2", "text": "beta?"}]
    write_beir(tmp_path, CORPUS, queries, QRELS)
    with pytest.raises(InputError) as err:
        load_dataset(DataConfig(name="beir", path=str(tmp_path), query_category_field=field))
    msg = str(err.value)
    assert msg.startswith(f"data.query_category_field={field!r}") and expected in msg and "\n" not in msg
    assert "Jane" not in msg and "confidential" not in msg


def test_query_category_field_is_refused_on_synthetic_data_and_read_from_a_csv_column(tmp_path):
    with pytest.raises(InputError, match="data.query_category_field='metadata.qtype': synthetic"):
        load_dataset(DataConfig(name="synthetic", query_category_field="metadata.qtype"))
    (tmp_path / "notes.jsonl").write_text(json.dumps({"_id": "r1", "text": "chest pain"}) + "\n")
    (tmp_path / "q.csv").write_text("_id,text,ward\na,pain,cardiology\nb,cough,respiratory\n")
    (tmp_path / "qrels.tsv").write_text("a\tr1\t1\nb\tr1\t1\n")
    files = {k: str(tmp_path / f) for k, f in (("corpus_file", "notes.jsonl"), ("queries_file", "q.csv"))}
    cfg = DataConfig(name="records", qrels_file=str(tmp_path / "qrels.tsv"), query_category_field="ward", **files)
    assert load_dataset(cfg).query_categories == {"a": "cardiology", "b": "respiratory"}


def test_medquad_question_types_become_categories():
    from tests.conftest import real_data

    ds = load_dataset(DataConfig(name="beir", path=str(real_data("medquad")), query_category_field="metadata.qtype"))
    cats = {ds.query_categories[q] for q in ds.query_ids}
    assert len(cats) == 16 and {"information", "symptoms", "treatment", "complications"} <= cats
