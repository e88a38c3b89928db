"""Automatic query slices (numeric, negation, abbreviation, rare term, long query), their masks, and the
judge's per-query rows carrying them: hand-written queries per rule, counts on real queries."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from medret.config import DataConfig, EvalConfig
from medret.data import RetrievalDataset, load_dataset
from medret.evaluation.judge import judge, per_query_rows
from medret.evaluation.slices import (
    AUTO_SLICES,
    has_abbreviation,
    is_negated,
    is_numeric,
    query_tags,
    rare_threshold,
    slice_masks,
)
from tests.conftest import real_data


@pytest.mark.parametrize(
    "text",
    [
        "metformin 500 mg twice daily",
        "HbA1c above 7 %",
        "type 2 diabetes",
        "patients with eGFR < 30",
        "at least three episodes",
        "more than twenty cigarettes a day",
        "glycogen storage disease type VI",
        "What is the usual dose of warfarin",
        "potassium in mmol per litre",
        "blood pressure over 140/90",
    ],
)
def test_numeric_positive(text):
    assert is_numeric(text)


@pytest.mark.parametrize(
    "text",
    [
        "How many people are affected by Stickler syndrome ?",  # asks for a number, holds none
        "What are the symptoms of Myasthenia gravis (MG) ?",  # MG in capitals is a diagnosis, not milligrams
        "one of the causes of chronic cough",
        "Which blood type is inherited ?",
        "What causes Wolf-Hirschhorn syndrome ?",
    ],
)
def test_numeric_negative(text):
    assert not is_numeric(text)


@pytest.mark.parametrize(
    "text",
    [
        "chest pain without fever",
        "Cell death does not occur in Galliformes.",
        "patient denies alcohol use",
        "absence of the vas deferens",
        "biomaterials lack inductive properties",
        "negative for influenza A",
        "free of recurrence at five years",
        "pulmonary embolism was ruled out",
        "There is no association between HNF4A and diabetes",
        "the drug doesn't cross the blood brain barrier",
        "patients unable to walk",
    ],
)
def test_negation_positive(text):
    assert is_negated(text)


@pytest.mark.parametrize(
    "text",
    [
        "What are the treatments for Non-Hodgkin Lymphoma ?",  # a name, not a negation
        "knowledge of the nose and throat",  # cue letters inside words
        "What is notable about this therapy",
        "lacrimal gland tumours",
        "the absorption of iron",
    ],
)
def test_negation_negative(text):
    assert not is_negated(text)


@pytest.mark.parametrize(
    "text",
    ["Do you have information about MRSA", "elderly man with T2DM", "BRCA1 carriers", "HbA1c target", "an mRNA decoy"],
)
def test_abbreviation_positive(text):
    assert has_abbreviation(text)


@pytest.mark.parametrize(
    "text",
    [
        "What are the symptoms of McArdle disease ?",  # a surname's capitals
        "Is mucopolysaccharidosis type II inherited ?",  # a Roman numeral
        "WHAT ARE THE SYMPTOMS OF FLU",  # capitals throughout: case marks nothing
        "What is (are) DiGeorge syndrome ?",
        "I have a cough",
    ],
)
def test_abbreviation_negative(text):
    assert not has_abbreviation(text)


def tiny_set(queries: list[str], docs: list[str], categories: dict[str, str] | None = None) -> RetrievalDataset:
    qids = [f"q{i}" for i in range(len(queries))]
    return RetrievalDataset(
        name="tiny",
        doc_ids=[f"d{i}" for i in range(len(docs))],
        doc_texts=docs,
        query_ids=qids,
        query_texts=queries,
        qrels={q: {"d0": 1} for q in qids},
        query_categories=categories or {},
    )


def test_rare_term_counts_document_frequency_and_long_query_the_90th_percentile():
    common = "asthma inhaler cough wheeze"
    docs = [f"{common} note {i}" for i in range(10)] + ["asthma and sarcoidosis", "asthma sarcoidosis again"]
    queries = [
        "asthma cough",  # every word in many documents
        "asthma with sarcoidosis",  # df 2: rare (threshold max(2, 0.0002 * 12) = 2)
        "asthma with zygomycosis",  # df 0: no document holds it
        "the cough",
        "asthma wheeze and inhaler cough with a note on the asthma and the cough",  # the longest, common words
    ]
    assert rare_threshold(12) == 2 and rare_threshold(100_000) == 20
    tags = query_tags(tiny_set(queries, docs))
    assert [("rare_term" in tags[f"q{i}"]) for i in range(5)] == [False, True, True, False, False]
    assert [q for q, t in tags.items() if "long_query" in t] == ["q4"]
    assert all(t == sorted(t) and set(t) <= set(AUTO_SLICES) for t in tags.values())


def test_slice_masks_align_with_qids_and_name_categories():
    queries = ["metformin 500 mg", "cough without fever", "COPD exacerbation", "plain cough"]
    data = tiny_set(queries, ["metformin cough fever copd exacerbation plain"] * 5, {"q0": "drug", "q2": "lung"})
    tags = query_tags(data)
    qids = ["q3", "q2", "q1", "q0"]  # any order: masks follow qids
    masks = slice_masks(qids, data, tags)
    assert list(masks)[: 1 + len(AUTO_SLICES)] == ["all", *AUTO_SLICES]
    assert masks["all"].tolist() == [True] * 4
    assert masks["numeric"].tolist() == [False, False, False, True]
    assert masks["negation"].tolist() == [False, False, True, False]
    assert masks["abbreviation"].tolist() == [False, True, False, False]
    assert masks["category:drug"].tolist() == [False, False, False, True]
    assert masks["category:lung"].tolist() == [False, True, False, False]
    assert {k for k in masks if k.startswith("category:")} == {"category:drug", "category:lung"}
    assert all(m.dtype == bool and len(m) == 4 for m in masks.values())


def test_judge_carries_slices_and_per_query_rows_their_tags_not_text():
    queries = ["metformin 500 mg", "cough without fever", "COPD exacerbation"]
    data = tiny_set(queries, ["metformin 500 mg dose", "cough fever", "COPD"], {"q0": "drug"})
    data.qrels = type(data.qrels).from_dict({"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1}}, data.doc_ids)
    out = SimpleNamespace(ranked_index=np.array([[0, 1, 2], [0, 1, 2], [2, 1, 0]]))
    j = judge(out, data, [1, 3], None, EvalConfig(k_values=[1, 3], bootstrap_resamples=50), 0)
    assert j.tags["q0"] == ["numeric", "rare_term"] and "negation" in j.tags["q1"] and "abbreviation" in j.tags["q2"]
    assert j.slices["numeric"].tolist() == [True, False, False] and j.slices["category:drug"].sum() == 1
    assert set(j.by_category) == {"drug"}  # queries without a category form no category of their own
    rows = per_query_rows(j, data, None)
    assert [r["slices"] for r in rows] == [j.tags[q] for q in j.qids]
    assert not any(t in str(rows) for t in ("metformin", "without", "exacerbation"))


def test_medquad_queries_carry_every_tag_in_plausible_numbers():
    ds = load_dataset(DataConfig(name="beir", path=str(real_data("medquad")), query_category_field="metadata.qtype"))
    tags = query_tags(ds)
    counts = Counter(t for ts in tags.values() for t in ts)
    n = len(ds.query_ids)
    # measured on 16,407 queries: numeric 1665, negation 34, abbreviation 813, rare_term 1047, long_query 1471
    assert all(counts[t] > 0 for t in AUTO_SLICES), counts
    assert 0.05 * n < counts["numeric"] < 0.2 * n and counts["negation"] < 0.01 * n
    assert 0.02 * n < counts["abbreviation"] < 0.1 * n and 0.02 * n < counts["rare_term"] < 0.2 * n
    assert 0.03 * n < counts["long_query"] <= 0.1 * n
    masks = slice_masks(ds.query_ids, ds, tags)
    assert sum(1 for k in masks if k.startswith("category:")) == 16
    assert sum(int(masks[k].sum()) for k in masks if k.startswith("category:")) == n


def test_scifact_claims_are_often_numeric_or_negated():
    ds = load_dataset(DataConfig(name="beir", path=str(real_data("scifact"))))
    counts = Counter(t for ts in query_tags(ds).values() for t in ts)
    n = len(ds.query_ids)  # 300 test claims: numeric 120, negation 35, abbreviation 137, rare 179, long 20
    assert all(counts[t] > 0 for t in AUTO_SLICES), counts
    assert counts["numeric"] > 0.2 * n and counts["negation"] > 0.05 * n and counts["long_query"] <= 0.1 * n
