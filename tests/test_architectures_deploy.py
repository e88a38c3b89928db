"""Every architecture of the matrix (tests/tiny_models.py) through the deployment runtimes and the train kinds.

Runtimes: the exported graph's embeddings against torch fp32, and the quantized graphs' weight MatMuls counted
against the encoder's ``nn.Linear`` modules (the pooler excepted: ``last_hidden_state`` never reaches it). Rules:

- fp32 ONNX: exactly one MatMul against a 2-D weight initializer per linear (none skipped, none fused away);
- onnx dynamic_int8: every one of them is a MatMulInteger on an int8 weight, no float weight MatMul left;
- onnx static_int8: every one reads DequantizeLinear of an int8 weight, except the down-projections
  (in_features > out_features), which ``static_nodes`` keeps fp32 by design; exactly those stay float;
- openvino int8: every weight MatMul reads an int8 constant;
- openvino int4_weights: every weight MatMul reads a compressed constant, 4-bit for all but one (NNCF keeps
  the last layer in 8 bits by default).

Train kinds: two steps each, finite loss, a checkpoint; contrastive updates every linear, qat's packed model
and qlora's adapters (over bitsandbytes nf4 and a custom 4-bit scheme) cover exactly those linears.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from medret.config import ModelConfig, RuntimeConfig
from medret.models import TextEncoder, load_retriever
from medret.runtime import build_runtime
from medret.training import run_train
from tests.conftest import TINY_VOCAB, WORDS
from tests.test_train import train_cfg
from tests.tiny_models import ARCHITECTURES, build_tiny_encoder

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None
HAS_OV = HAS_ORT and importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None

VOCAB = TINY_VOCAB
MAX_LENGTH = 32  # above ModernBERT's local window (16 here), so its sliding-window mask is exercised
# encoder linears per architecture at 2 layers; ELECTRA adds embeddings_project, ModernBERT fuses QKV and the GLU
LINEARS = {"bert": 12, "mpnet": 12, "roberta": 12, "distilbert": 12, "electra": 13, "modernbert": 8}
NAMED = {
    "distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    "electra": ("embeddings_project",),
    "modernbert": ("Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"),
}


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, 40)))) for _ in range(n)]


TEXTS = ["pain", *_texts(15, seed=1)]  # 1 to ~40 words: some truncated at MAX_LENGTH
CALIBRATION = _texts(16, seed=2)
# least cosine to torch fp32 over TEXTS; seen here: int8 modes >= 0.9994, int4 >= 0.997 (ELECTRA's 16-wide projection)
MIN_COS = {"dynamic_int8": 0.998, "static_int8": 0.998, "int8": 0.998, "int4_weights": 0.99}


@dataclass
class Tiny:
    arch: str
    path: Path
    encoder: TextEncoder
    reference: np.ndarray  # torch fp32 embeddings of TEXTS
    cache: Path  # one runtime cache per model: its ONNX export is made once and reused by every mode


def encoder_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith("pooler.")]


def down_projections(model: nn.Module) -> int:
    """Linears that shrink the width (FFN output): static int8 keeps them fp32 (onnx_backend.static_nodes)."""
    return sum(model.get_submodule(n).in_features > model.get_submodule(n).out_features for n in encoder_linears(model))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root, built = tmp_path_factory.mktemp("zoo"), {}

    def get(arch: str) -> Tiny:
        if arch not in built:
            path = build_tiny_encoder(root / arch, arch, VOCAB)
            cfg = ModelConfig(name=arch, path=str(path), max_length=MAX_LENGTH, device="cpu")
            enc = load_retriever(cfg).doc
            built[arch] = Tiny(arch, path, enc, enc.encode(TEXTS, batch_size=8), root / f"{arch}-cache")
        return built[arch]

    return get


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tiny_models_have_the_linears_the_matrix_counts(zoo, arch):
    names = encoder_linears(zoo(arch).encoder.model)
    assert len(names) == LINEARS[arch], names
    assert all(any(n.endswith(part) for n in names) for part in NAMED.get(arch, ()))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _build(tiny: Tiny, name: str, quantize: str):
    # group 16: the tiny rows are 32 wide; one thread keeps the test off the benchmark's core
    cfg = RuntimeConfig(name=name, quantize=quantize, threads=1, group_size=16, calibration_texts=len(CALIBRATION))
    return build_runtime(tiny.encoder, cfg, tiny.cache, tiny.arch, CALIBRATION)


def onnx_weight_matmuls(path: Path) -> Counter:
    """Per weight MatMul of an ONNX graph, what it reads: 'float', 'int8' (MatMulInteger, or MatMul after
    DequantizeLinear of an int8 initializer)."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    dequant = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    out: Counter = Counter()
    for n in graph.node:
        for x in n.input[1:2] if n.op_type in ("MatMul", "MatMulInteger") else ():
            src = inits.get(dequant.get(x, x))
            if src is None or len(src.dims) != 2:
                continue  # activation x activation (attention scores), or no weight
            int8 = src.data_type == onnx.TensorProto.INT8
            out[("int8" if int8 else "float") if n.op_type == "MatMul" else f"{n.op_type}:int8"] += 1
    return out


def openvino_weight_matmuls(path: Path) -> Counter:
    """Per MatMul of an OpenVINO IR whose second input is (decompressed from) a constant: its element type."""
    import openvino as ov

    out: Counter = Counter()
    for op in ov.Core().read_model(str(path)).get_ops():
        if op.get_type_name() != "MatMul":
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            out[node.get_element_type().get_type_name()] += 1
    return out


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnxscript not installed")
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_onnx_export_matches_torch_and_int8_quantizes_every_linear(zoo, arch):
    tiny = zoo(arch)
    n_lin = LINEARS[arch]
    rt, info = _build(tiny, "onnx", "none")
    emb = rt.encode(TEXTS, batch_size=8)
    assert _cos(emb, tiny.reference).min() > 0.99999
    np.testing.assert_allclose(emb, tiny.reference, atol=2e-5)
    np.testing.assert_allclose(rt.encode(TEXTS[:5], batch_size=1), emb[:5], atol=1e-5)  # dynamic batch/length
    assert info["attention"] == "eager" and info["quantization"] == "none"
    # MPNet, DistilBERT and ModernBERT take no token_type_ids: the graph has no such input
    assert ("token_type_ids" in info["inputs"]) == (arch in ("bert", "roberta", "electra"))
    assert onnx_weight_matmuls(rt.files[0]) == {"float": n_lin}

    downs = down_projections(tiny.encoder.model)
    expected = {"dynamic_int8": {"MatMulInteger:int8": n_lin}, "static_int8": {"int8": n_lin - downs, "float": downs}}
    for quantize, matmuls in expected.items():
        qrt, qinfo = _build(tiny, "onnx", quantize)
        qemb = qrt.encode(TEXTS, batch_size=8)
        assert _cos(qemb, tiny.reference).min() > MIN_COS[quantize], (quantize, _cos(qemb, tiny.reference).min())
        assert np.abs(qemb - tiny.reference).max() > 1e-5  # integer kernels changed the numbers
        assert qinfo["quantization"] == "deployed" and qinfo["export_cached"]  # the fp32 export above, reused
        assert onnx_weight_matmuls(qrt.files[0]) == matmuls, quantize
    assert qinfo["conversion"]["fp32_matmuls_kept"] == downs


@pytest.mark.skipif(not HAS_OV, reason="openvino/nncf not installed")
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_openvino_int8_and_int4_quantize_every_linear(zoo, arch):
    tiny = zoo(arch)
    n_lin = LINEARS[arch]
    expected = {"int8": {"i8": n_lin}, "int4_weights": {"u4": n_lin - 1, "u8": 1}}
    for quantize, matmuls in expected.items():
        rt, info = _build(tiny, "openvino", quantize)
        emb = rt.encode(TEXTS, batch_size=8)
        assert _cos(emb, tiny.reference).min() > MIN_COS[quantize], (quantize, _cos(emb, tiny.reference).min())
        assert np.abs(emb - tiny.reference).max() > 1e-5
        assert info["quantization"] == "deployed" and info["inference_precision"] == "f32"
        assert openvino_weight_matmuls(next(f for f in rt.files if f.suffix == ".xml")) == matmuls, quantize


# ---- train.py kinds -------------------------------------------------------------------------------------------

KINDS = {
    "contrastive": (),
    "qat": ("train=qat", "quant=uniform", "quant.bits=4", "quant.group_size=16"),
    "qlora-nf4": ("train=qlora", "quant.blocksize=32", "train.lora_r=4"),  # train=qlora's default base
    # bias-free linears (ModernBERT) have no parameter for peft to place the adapters by: medret lends one
    "qlora-uniform": ("train=qlora", "quant=uniform", "quant.bits=4", "quant.group_size=16", "train.lora_r=4"),
}


def _train(tiny: Tiny, kind: str, out: Path) -> dict:
    cfg = train_cfg(
        tiny.path,
        *KINDS[kind],
        f"model.name={tiny.arch}",
        f"model.max_length={MAX_LENGTH}",
        "data.num_records=60",
        "data.num_queries=20",
        "eval.k_values=[1,10]",
        "train.max_steps=2",
        "train.dev_every=2",
        "train.checkpoint_every=2",
        "train.warmup_steps=0",  # both steps move the weights
        "train.lr=1e-3",
    )
    return run_train(cfg, out)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_train_kind_runs_and_covers_every_linear(zoo, tmp_path, arch, kind):
    tiny = zoo(arch)
    names = encoder_linears(tiny.encoder.model)
    res = _train(tiny, kind, tmp_path)
    losses = [h["loss"] for h in res["history"]]
    assert res["steps"] == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    step = tmp_path / "checkpoints" / "step-2"
    assert (step / "trainer_state.json").is_file()
    best = Path(res["best_model"])
    assert json.loads((best / "config.json").read_text())["model_type"] == arch
    if kind == "contrastive":
        before = load_file(str(tiny.path / "model.safetensors"))
        after = load_file(str(best / "model.safetensors"))
        changed = [n for n in names if not torch.equal(before[f"{n}.weight"], after[f"{n}.weight"])]
        assert changed == names  # every linear got a gradient
        assert (step / "model.safetensors").is_file()
    elif kind == "qat":
        modules = json.loads((best / "medret_quant.json").read_text())["modules"]
        assert sorted(modules) == sorted(names)
        assert 4.0 < res["quant"]["effective_bits_per_param"] < 6.0
    else:
        adapter = Path(res["quant"]["adapter"])
        meta = json.loads((adapter / "medret_adapter.json").read_text())
        assert meta["targets"] == [names]
        state = load_file(str(adapter / "adapter0.safetensors"))
        trained_b = {k.split(".lora_B")[0] for k, v in state.items() if ".lora_B" in k and v.abs().max() > 0}
        assert len(state) == 2 * len(names) and len(trained_b) == len(names)  # B starts at 0: each one learned
        assert res["quant"]["merged_layers"] == len(names)
        assert (step / "adapter0.safetensors").is_file() and not (step / "model.safetensors").exists()
