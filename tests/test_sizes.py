"""Whole-model quantization (the word-embedding table too), bytes by part, and decode-once speed mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medret.config import ModelConfig, QuantConfig
from medret.evaluation import run_evaluate
from medret.models import load_retriever
from medret.quant import decode_resident, quantize_retriever
from medret.quant.embedding import QuantEmbedding, decode_rows
from medret.quant.layers import quantize_weight
from medret.quant.sizes import bytes_by_part
from medret.quant.state import dequantize
from tests.test_evaluate import compose_cfg, tiny_overrides, wandb_summary

TEXTS = ["chest pain radiating to the left arm", "no known allergies", "type 2 diabetes on metformin"]


@pytest.mark.parametrize(
    "spec",
    [
        QuantConfig(name="nf", bits=4, group_size=16),
        QuantConfig(name="kmeans", bits=3, group_size=8),  # one codebook per group
        QuantConfig(name="uniform", bits=2, granularity="channel", symmetric=False, outlier_fraction=0.02),
    ],
)
def test_lookup_decodes_exactly_the_gathered_rows(spec):
    torch.manual_seed(0)
    table = torch.randn(100, 32)
    gs = 32 if spec.granularity == "channel" else spec.group_size
    state = quantize_weight(table, spec, gs)
    full = dequantize(state)
    ids = torch.tensor([[3, 3, 99, 0], [57, 3, 12, 12]])
    emb = QuantEmbedding.from_state(state)
    assert torch.equal(emb(ids), full[ids])
    rows = torch.tensor([0, 12, 99])
    assert torch.equal(decode_rows(state, rows), full[rows])


def test_fp32_parts_add_up_to_the_state_dict(tiny_bert):
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    parts = bytes_by_part(r.doc.model)
    sd = sum(t.numel() * t.element_size() for t in r.doc.model.state_dict().values())
    assert sum(parts.values()) == sd
    emb = r.doc.model.get_input_embeddings().weight
    assert parts["embeddings"] == emb.numel() * 4
    linears = sum(m.weight.numel() * 4 for m in r.doc.model.modules() if isinstance(m, torch.nn.Linear))
    assert parts["linear"] == linears


@pytest.mark.parametrize("name", ["nf", "bnb_nf4", "bnb_int8"])
def test_embeddings_quantized_shrink_the_table_and_stay_close(tiny_bert, name):
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    ref = r.doc.encode(TEXTS, 4)
    fp32_parts = bytes_by_part(r.doc.model)
    info = quantize_retriever(r, QuantConfig(name=name, bits=4, group_size=16, embeddings=True))
    parts = info["bytes_by_part"]
    bits = 8 if name == "bnb_int8" else 4
    # the table now costs about its bit width (plus scales), not 32 bits a weight
    assert parts["embeddings"] < fp32_parts["embeddings"] * (bits + 2.5) / 32
    assert parts["other"] == fp32_parts["other"]
    assert info["model_bytes"] == sum(parts.values())
    assert info["effective_bits_per_param_all"] == pytest.approx(8 * info["model_bytes"] / info["params_all"])
    assert any(layer["name"].endswith("word_embeddings") for layer in info["layers"])
    cos = (ref * r.doc.encode(TEXTS, 4)).sum(1)
    assert cos.min() > 0.98


def test_decode_once_gives_the_per_forward_embeddings_and_fp32_speed_layout(tiny_bert):
    per_forward = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    once = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    spec = QuantConfig(name="nf", bits=3, group_size=16, embeddings=True)
    a_info = quantize_retriever(per_forward, spec)
    quantize_retriever(once, spec)
    res = decode_resident(once, spec)
    assert res["decode"] == "once" and res["decoded_modules"] == 13  # 12 linears + the embedding table
    assert res["resident_bytes"] > a_info["model_bytes"]  # dense fp32 resident, packed sizes reported
    assert not any(isinstance(m, QuantEmbedding) for m in once.doc.model.modules())
    np.testing.assert_allclose(per_forward.doc.encode(TEXTS, 4), once.doc.encode(TEXTS, 4), atol=1e-6)
    kept = decode_resident(per_forward, QuantConfig(name="nf", bits=3, decode="per_forward"))
    assert kept["decode"] == "none" and kept["resident_bytes"] == a_info["model_bytes"]


def test_evaluate_reports_sizes_by_part_in_results_and_wandb(tiny_bert, tmp_path):
    over = (
        "quant=nf",
        "quant.bits=4",
        "quant.group_size=16",
        "quant.embeddings=true",
        f"quant.save_dir={tmp_path / 'q'}",
    )
    cfg = compose_cfg(*tiny_overrides(tiny_bert, "logger=wandb", f"cache.dir={tmp_path / 'c'}", *over))
    res = run_evaluate(cfg, tmp_path / "run")
    sizes = json.loads((tmp_path / "run" / "results.json").read_text())["sizes"]
    assert set(sizes["by_part"]) == {"linear", "embeddings", "other"}
    assert sum(sizes["by_part"].values()) == sizes["model_param_bytes"]
    assert 4 < sizes["effective_bits_per_param_all"] < 32
    assert res["quant"]["decode"] == "once"
    summary = wandb_summary(Path(res["wandb"]["dir"]))["summary"]
    assert summary["size/by_part/embeddings"] == sizes["by_part"]["embeddings"]
    assert summary["size/effective_bits_per_param_all"] == pytest.approx(sizes["effective_bits_per_param_all"])
    # the packed folder (embeddings included) loads without re-quantizing and gives the same ranking
    again = run_evaluate(
        compose_cfg(
            *tiny_overrides(tiny_bert, "logger=none", f"model.path={tmp_path / 'q'}", f"cache.dir={tmp_path / 'c2'}")
        ),
        tmp_path / "again",
    )
    assert again["quant"]["loaded_packed"] is True
    assert again["metrics"]["ndcg@10"] == pytest.approx(res["metrics"]["ndcg@10"], abs=1e-6)
    assert again["sizes"]["model_param_bytes"] == pytest.approx(sizes["model_param_bytes"], rel=0.01)
