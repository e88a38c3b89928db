"""The pooler no medret pooling reads is taken off the model (medret.models.unread): not stored in a packed model,
not counted in its bytes, yet still in the weights digest (cache keys, saved models' sources) and written back in
a fine-tuned fp32 export."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from medret.config import ModelConfig, QuantConfig
from medret.models import load_retriever
from medret.models.saving import export, save_quantized
from medret.quant import quantize_retriever
from medret.retrieval import model_identity, weights_digest

TEXTS = ["patient with diabetes on metformin", "no chest pain today", "hypertension follow up in clinic"]


def test_the_pooler_is_off_the_model_but_in_its_digest(tiny_bert):
    full = AutoModel.from_pretrained(tiny_bert).eval()
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    assert r.doc.model.pooler is None and set(r.doc.unread) == {"pooler"}
    assert model_identity(r)["doc"] == weights_digest(full)  # the same key as when the pooler was loaded
    pooler_bytes = sum(t.numel() * t.element_size() for t in full.pooler.state_dict().values())
    full_bytes = sum(t.numel() * t.element_size() for t in full.state_dict().values())
    assert pooler_bytes > 0 and r.param_bytes() == full_bytes - pooler_bytes
    enc = r.doc.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = full(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(r.doc.encode(TEXTS, 2), want, atol=1e-5)  # last_hidden_state never needed it


def test_an_fp32_export_writes_the_real_pooler_back(tiny_bert, tmp_path):
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    export(r, tmp_path / "out")
    assert r.doc.model.pooler is None  # detached again after writing
    again = AutoModel.from_pretrained(tmp_path / "out")
    full = AutoModel.from_pretrained(tiny_bert)
    torch.testing.assert_close(again.pooler.dense.weight, full.pooler.dense.weight)


def test_a_packed_model_stores_no_pooler_and_an_older_folder_with_one_still_loads(tiny_bert, tmp_path):
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    quantize_retriever(r, QuantConfig(name="nf", bits=4, group_size=16))
    want = r.doc.encode(TEXTS, 2)
    folder = save_quantized(r, tmp_path / "q", {"name": "nf", "bits": 4})
    state = load_file(str(folder / "model.safetensors"))
    assert not any(k.startswith("pooler.") for k in state)
    assert json.loads((folder / "medret_quant.json").read_text())["dropped"] == ["pooler"]
    loaded = load_retriever(ModelConfig(name="t", path=str(folder)))
    assert loaded.doc.model.pooler is None and loaded.doc.unread == {}
    assert loaded.param_bytes() == r.param_bytes()
    np.testing.assert_allclose(loaded.doc.encode(TEXTS, 2), want, atol=1e-6)
    # a folder saved before the pooler was dropped: its pooler is loaded, then detached like an fp32 model's
    full = AutoModel.from_pretrained(tiny_bert)
    state.update({f"pooler.{k}": v.contiguous() for k, v in full.pooler.state_dict().items()})
    save_file(state, str(folder / "model.safetensors"))
    manifest = json.loads((folder / "medret_quant.json").read_text())
    del manifest["dropped"]
    (folder / "medret_quant.json").write_text(json.dumps(manifest))
    old = load_retriever(ModelConfig(name="t", path=str(folder)))
    assert old.doc.model.pooler is None and set(old.doc.unread) == {"pooler"}
    assert old.param_bytes() == r.param_bytes()
    np.testing.assert_allclose(old.doc.encode(TEXTS, 2), want, atol=1e-6)
