"""bench/gpubench without a GPU: the variant list, the output writer, medret's bitsandbytes layers in the
bench's swap, and the CLI's variant selection. The full CPU smoke run is `bench/gpu_bench.py --device cpu --smoke`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from gpubench import output, variants  # noqa: E402

ENV = {
    "torch": "2",
    "torch_cuda": None,
    "cudnn": None,
    "transformers": "4",
    "numpy": "2",
    "python": "3.12",
    "cpu_count": 2,
    "optional": {"faiss": "absent"},
}
PREP = {"mean_tokens": 50.0, "max_tokens": 62, "tokenizer_docs_per_s": 1000.0}


def test_variant_names_are_unique_and_sections_known():
    assert len(variants.NAMES) == len(set(variants.NAMES)) == len(variants.SPEC)
    assert {v[1] for v in variants.VARIANTS} == {"enc", "idx"}
    assert variants.sizes(True) is not variants.sizes(True)  # a copy: a run may not change the defaults


def test_outputs_hold_every_variant_and_the_ratios_to_fp32(tmp_path):
    cfg = {**variants.sizes(True), "device": "cpu", "smoke": True}
    enc = {"status": "ok", "n_texts": 32, "repeats": 3, "linear_MB": 4.0}
    rows = {
        "fp32": {**enc, "docs_per_s": 10.0, "weights_MB": 80.0, "linear_MB": 40.0},
        "fp16": {**enc, "docs_per_s": 20.0, "weights_MB": 40.0},
        "idx_torch_fp32": {"status": "ok", "qps": 100.0, "recall@10": 1.0, "recall@100": 1.0},
        "ort_cuda": {"status": "skipped", "reason": "needs CUDA"},
    }
    output.write_outputs(tmp_path, ENV, PREP, cfg, rows, 12.0, done=True)
    md = (tmp_path / "gpu_bench.md").read_text()
    for name in variants.NAMES:
        label = variants.SPEC[name][2]
        assert label in md or name == "idx_torch_fp32", name
    assert "torch exact fp32 (matmul + topk) (faiss-gpu not available)" in md
    assert "| ONNX Runtime CUDA EP (fp32 graph) | skipped: needs CUDA |" in md
    saved = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert set(saved) == {"env", "prepared", "config", "rows", "total_s", "complete"}
    assert saved["rows"]["fp16"]["speedup_vs_fp32"] == 2.0
    assert saved["rows"]["fp16"]["size_vs_fp32"] == 0.5
    assert saved["rows"]["fp16"]["linear_size_vs_fp32"] == 0.1


def test_unknown_variant_is_one_line():
    import gpu_bench

    assert gpu_bench.selected("bf16, fp32") == ["fp32", "bf16"]
    with pytest.raises(SystemExit, match=r"unknown variants \['bogus'\]"):
        gpu_bench.selected("fp32,bogus")


def test_bnb_swap_uses_medrets_layers_and_counts_their_scales():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    from gpubench.builders import bnb_swap, model_bytes
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig.from_pretrained(variants.ARCH), add_pooling_layer=False).eval()
    fp32_total, fp32_linear = model_bytes(model)
    model = bnb_swap(model, "nf4", torch.float16, torch.float16, torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 36  # 6 blocks x (q, k, v, attention output, intermediate, output)
    assert all(m.bias.dtype == torch.float16 and m.compute_dtype == torch.float16 for m in layers)
    total, linear = model_bytes(model)
    # the MB the bench reported before it used medret's count (bench/results/gpu/gpu_bench.json, bnb_nf4_fp16)
    assert (round(fp32_total / 2**20, 2), round(fp32_linear / 2**20, 2)) == (86.08, 40.58)
    assert (round(total / 2**20, 2), round(linear / 2**20, 2)) == (28.49, 5.74)
