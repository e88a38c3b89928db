"""quant.refine_steps: after rounding, the stored floats, biases and LayerNorms are fitted to the fp32 model's
token outputs on the calibration texts. Measured on a tiny BERT: the outputs move towards fp32 on texts the
fit never saw, the codes and the stored bytes do not change, and the refined model saves and reloads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from medret.config import QuantConfig
from medret.errors import InputError
from medret.models.saving import save_quantized
from medret.quant import quant_identity, quantize_retriever, validate
from medret.quant.linear import QuantLinear
from medret.quant.state import dequantize
from tests.test_gptq import NOTES, tiny_evaluate, tiny_retriever

FIT, HELD_OUT = NOTES[:16], NOTES[16:]


def token_cosine(a, b, texts: list[str]) -> float:
    """Mean cosine of two encoders' token outputs (padding excluded)."""
    enc = a.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ha, hb = a.model(**enc).last_hidden_state, b.model(**enc).last_hidden_state
    m = enc["attention_mask"].bool()
    return F.cosine_similarity(ha, hb, dim=-1)[m].mean().item()


def packed(r) -> dict[str, QuantLinear]:
    return {n: m for n, m in r.doc.model.named_modules() if isinstance(m, QuantLinear)}


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(name="nf", bits=2, group_size=16, calibration_texts=16),
        QuantConfig(name="kmeans", bits=2, granularity="channel", kmeans_iters=5, calibration_texts=16),
        QuantConfig(name="uniform", bits=2, symmetric=False, group_size=16, method="gptq", calibration_texts=16),
    ],
    ids=["nf-rtn", "kmeans-rtn", "uniform-asym-gptq"],
)
def test_refinement_moves_unseen_outputs_towards_fp32_and_keeps_codes_and_bytes(tiny_bert, cfg):
    fp32, plain, refined = (tiny_retriever(tiny_bert) for _ in range(3))
    info_plain = quantize_retriever(plain, cfg, calibration=FIT)
    info = quantize_retriever(refined, replace(cfg, refine_steps=40, refine_lr=1e-3), calibration=FIT)
    (report,) = info["refine"]
    assert report["steps"] == 40 and report["loss_after"] < report["loss_before"]
    assert report["seconds_per_step"] > 0  # the cost at a model's size, in results.json
    assert "refine" not in info_plain
    # texts the fit never saw: the refined model's token outputs are closer to fp32's than the plain rounding's
    assert token_cosine(refined.doc, fp32.doc, HELD_OUT) > token_cosine(plain.doc, fp32.doc, HELD_OUT)
    # the codes and what is stored are the rounding's: only the floats around them moved
    assert info["effective_bits_per_param"] == info_plain["effective_bits_per_param"]
    assert info["model_bytes"] == info_plain["model_bytes"]
    mine, theirs = packed(refined), packed(plain)
    assert set(mine) == set(theirs) and mine
    for n, m in mine.items():
        assert torch.equal(m.planes, theirs[n].planes), n
        assert m.scale is None or m.scale.dtype == torch.float16
    changed = [n for n, m in mine.items() if not torch.equal(dequantize(m.state()), dequantize(theirs[n].state()))]
    assert len(changed) == len(mine)
    if cfg.name == "nf":  # fixed levels: the shared codebook is the scheme's, not fitted
        assert all(torch.equal(m.codebook, theirs[n].codebook) for n, m in mine.items())


def test_refined_model_saves_and_loads_the_same_weights(tiny_bert, tmp_path):
    r = tiny_retriever(tiny_bert)
    cfg = QuantConfig(name="nf", bits=3, group_size=16, calibration_texts=16, refine_steps=10, refine_lr=1e-3)
    info = quantize_retriever(r, cfg, calibration=FIT)
    loaded = tiny_retriever(save_quantized(r, tmp_path / "saved", info))
    theirs = packed(loaded)
    for n, m in packed(r).items():
        assert torch.equal(dequantize(m.state()), dequantize(theirs[n].state())), n
    torch.testing.assert_close(torch.as_tensor(loaded.doc.encode(NOTES, 8)), torch.as_tensor(r.doc.encode(NOTES, 8)))


def test_refinement_is_keyed_only_when_on():
    assert not {"refine_steps", "refine_lr"} & set(quant_identity(QuantConfig(name="nf", bits=3)))
    on = quant_identity(QuantConfig(name="nf", bits=3, refine_steps=50))
    assert on["refine_steps"] == 50 and on["refine_lr"] == QuantConfig().refine_lr


@pytest.mark.parametrize(
    "cfg, message",
    [
        (QuantConfig(name="nf", bits=3, refine_steps=-1), r"quant.refine_steps=-1: expected an integer >= 0"),
        (QuantConfig(name="nf", bits=3, refine_steps=10, refine_lr=0.0), r"quant.refine_lr=0.0: expected"),
        (QuantConfig(name="bnb_nf4", refine_steps=10), r"quant.refine_steps: refines .* not quant=bnb_nf4"),
        (QuantConfig(name="nf", bits=3, refine_steps=10, calibration_texts=1), r"quant.calibration_texts=1"),
    ],
)
def test_bad_refine_options_are_input_errors(cfg, message):
    with pytest.raises(InputError, match=message):
        validate(cfg)


def test_evaluate_reports_refinement(tiny_bert, tmp_path):
    quant = ["quant=nf", "quant.bits=3", "quant.group_size=16", "quant.calibration_texts=24", "quant.refine_steps=5"]
    q = tiny_evaluate(tiny_bert, tmp_path, *quant)["quant"]
    assert q["calibration_texts_used"] == 24 and q["refine"][0]["steps"] == 5 and q["refine"][0]["fitted_params"] > 0
