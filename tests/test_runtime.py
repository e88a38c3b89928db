"""Deployable runtimes: export, ONNX Runtime / OpenVINO (fp32, int8, int4) vs the torch encoder, cache, checks."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medret.config import ModelConfig, QuantConfig, RuntimeConfig
from medret.errors import InputError
from medret.models import load_retriever
from medret.runtime import build_runtime, validate
from medret.runtime import cache as cache_mod
from medret.runtime import exported as exported_mod
from tests.conftest import WORDS, build_tiny_bert

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnxscript not installed")
needs_ov = pytest.mark.skipif(not HAS_OV, reason="openvino/nncf not installed")

FP32_MODES = [("onnx", "none"), ("openvino", "none")]
QUANT_MODES = [("onnx", "dynamic_int8"), ("onnx", "static_int8"), ("openvino", "int8"), ("openvino", "int4_weights")]


def _texts(n: int, seed: int, max_words: int = 60) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(1, max_words)))) for _ in range(n)]


TEXTS = _texts(80, seed=1)  # up to 60 words: some are truncated at max_length
CALIBRATION = _texts(40, seed=2)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _cfg(name: str, quantize: str, **kw) -> RuntimeConfig:
    # group 32: the tiny model's rows are 64 wide; one thread keeps the tests off the other core
    return RuntimeConfig(name=name, quantize=quantize, threads=1, group_size=32, **kw)


def _mark(name: str):
    return needs_ort if name == "onnx" else [needs_ort, needs_ov]


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny64"), seed=3, hidden=64)


@pytest.fixture(scope="module")
def encoder(tiny64):
    return load_retriever(ModelConfig(name="tiny", path=str(tiny64), max_length=48, device="cpu")).doc


@pytest.fixture(scope="module")
def reference(encoder) -> np.ndarray:
    return encoder.encode(TEXTS, batch_size=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture(scope="module")
def fp32_bytes(encoder, cache) -> dict[str, int]:
    """Bytes of each runtime's fp32 model files (the bar the quantized files must come under)."""
    available = {"onnx": HAS_ORT, "openvino": HAS_ORT and HAS_OV}  # openvino converts the ONNX export
    return {
        name: build_runtime(encoder, _cfg(name, quantize), cache, "tiny64")[1]["bytes_on_disk"]
        for name, quantize in FP32_MODES
        if available[name]
    }


# ---- validate: cheap, one line, before any model loads ---------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"name": "tensorrt"}, "runtime.name='tensorrt'"),
        ({"name": "onnx", "quantize": "int4_weights"}, "runtime=onnx takes none | dynamic_int8 | static_int8"),
        ({"name": "openvino", "quantize": "dynamic_int8"}, "runtime=openvino takes none | int8 | int4_weights"),
        ({"name": "torch", "quantize": "int8"}, "quant=..."),
        ({"name": "onnx", "provider": "tpu"}, "runtime.provider='tpu'"),
        ({"name": "openvino", "provider": "cuda"}, "runtime.provider=cuda"),
        ({"name": "onnx", "threads": 0}, "runtime.threads=0"),
        ({"name": "onnx", "quantize": "static_int8", "calibration_texts": 0}, "runtime.calibration_texts=0"),
        ({"name": "openvino", "quantize": "int4_weights", "int4_mode": "int3"}, "runtime.int4_mode='int3'"),
        ({"name": "openvino", "quantize": "int4_weights", "group_size": 0}, "runtime.group_size=0"),
        ({"name": "openvino", "quantize": "int4_weights", "ratio": 1.5}, "runtime.ratio=1.5"),
        ({"name": "onnx", "opset": 3}, "runtime.opset=3"),
        ({"name": "onnx", "precision": "bf16"}, "runtime=onnx takes f32"),
        ({"name": "openvino", "precision": "fp8"}, "runtime=openvino takes f32 | bf16"),
        ({"name": "openvino", "quantize": "int8", "smooth_quant": 1.5}, "runtime.smooth_quant=1.5"),
        ({"name": "onnx", "quantize": "static_int8", "smooth_quant": 0.5}, "only runtime=openvino"),
        ({"name": "openvino", "quantize": "int4_weights", "smooth_quant": 0.5}, "only runtime=openvino"),
        ({"name": "onnx", "quantize": "static_int8", "float_down_proj": True}, "static_int8 always keeps them"),
        ({"name": "openvino", "quantize": "none", "float_down_proj": True}, "runtime.float_down_proj=true"),
    ],
)
def test_validate_rejects_bad_options(overrides, needle):
    with pytest.raises(InputError) as err:
        validate(RuntimeConfig(**overrides))
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize(("name", "quantize"), [("torch", "none"), *FP32_MODES, *QUANT_MODES])
def test_validate_accepts_every_mode(name, quantize):
    if name != "torch" and not (HAS_ORT and (name == "onnx" or HAS_OV)):
        pytest.skip(f"{name} not installed")
    validate(RuntimeConfig(name=name, quantize=quantize))
    validate({"name": name, "quantize": quantize})  # a plain mapping / Hydra node works too


def test_validate_names_the_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(InputError, match=r"runtime=openvino: the openvino package\(s\) are not installed; pip install"):
        validate(RuntimeConfig(name="openvino"))


def test_importing_runtime_loads_no_runtime_library():
    code = (
        "import sys, medret.runtime; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'openvino', 'nncf', 'onnx')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---- the runtimes against torch ---------------------------------------------------------------------------


def test_torch_runtime_is_the_encoder_itself(encoder, cache):
    rt, info = build_runtime(encoder, RuntimeConfig(), cache, "tiny64")
    assert rt is encoder
    assert info["name"] == "torch" and info["quantization"] == "none" and not info["from_medret_quant"]


@pytest.mark.parametrize(("name", "quantize"), [pytest.param(*m, marks=_mark(m[0])) for m in FP32_MODES])
def test_fp32_runtime_matches_torch(encoder, reference, cache, name, quantize):
    attention = encoder.model.config._attn_implementation
    rt, info = build_runtime(encoder, _cfg(name, quantize), cache, "tiny64")
    assert encoder.model.config._attn_implementation == attention  # traced as eager, then restored
    assert info["attention"] == "eager"
    emb = rt.encode(TEXTS, batch_size=16)
    assert emb.shape == reference.shape and emb.dtype == np.float32
    assert _cos(emb, reference).min() > 0.99999
    np.testing.assert_allclose(emb, reference, atol=2e-5)
    # dynamic batch and length: other batch sizes give the same vectors, in input order
    np.testing.assert_allclose(rt.encode(TEXTS[:7], batch_size=3), emb[:7], atol=1e-5)
    assert rt.encode([], batch_size=4).shape == (0, encoder.dim)
    assert rt.dim == encoder.dim and rt.tokenizer is encoder.tokenizer and rt.settings == encoder.settings
    assert rt.device == torch.device("cpu")
    assert info["quantization"] == "none" and not info["from_medret_quant"]
    assert info["inference_precision"] in ("fp32", "f32") and info["threads"] == 1
    assert info["bytes_on_disk"] > 0 and info["bytes_on_disk"] == rt.param_bytes()
    assert info["versions"]["onnx"] and info["opset"] >= 18 and "token_type_ids" in info["inputs"]


@pytest.mark.parametrize(("name", "quantize"), [pytest.param(*m, marks=_mark(m[0])) for m in QUANT_MODES])
def test_quantized_runtime_is_close_smaller_and_really_integer(encoder, reference, cache, fp32_bytes, name, quantize):
    rt, info = build_runtime(encoder, _cfg(name, quantize), cache, "tiny64", CALIBRATION)
    emb = rt.encode(TEXTS, batch_size=16)
    cos = _cos(emb, reference)
    assert cos.min() > 0.99, cos.min()
    assert np.abs(emb - reference).max() > 1e-5  # it did change something: not an fp32 graph
    assert info["quantization"] == "deployed" and info["quantize"] == quantize
    assert info["bytes_on_disk"] < 0.75 * fp32_bytes[name]
    folder = rt.files[0].parent
    if name == "onnx":
        import onnx

        ops = Counter(n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node)
        wanted = "MatMulInteger" if quantize == "dynamic_int8" else "QuantizeLinear"
        assert ops[wanted] > 0, ops
    else:
        xml = (folder / "model.xml").read_text()
        assert ("FakeQuantize" in xml) if quantize == "int8" else ('element_type="u4"' in xml)
        assert info["inference_precision"] == "f32"  # set explicitly: this CPU's default would be bf16
    if quantize in ("static_int8", "int8"):
        assert info["calibration_texts"] == len(CALIBRATION)


@needs_ov
def test_openvino_bf16_float_ops_reuse_the_int8_files_and_record_the_precision(encoder, reference, cache):
    """runtime.precision is a load-time choice: the same deployed files, compiled with bf16 float ops where
    the CPU has them (the precision recorded is the one OpenVINO reports, f32 on a CPU without bf16)."""
    import openvino as ov

    f32, f32_info = build_runtime(encoder, _cfg("openvino", "int8"), cache, "tiny64", CALIBRATION)
    bf16, info = build_runtime(encoder, _cfg("openvino", "int8", precision="bf16"), cache, "tiny64", CALIBRATION)
    assert info["cached"] and info["cache_key"] == f32_info["cache_key"]  # no second quantization
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert info["inference_precision"] == ("bf16" if has_bf16 else "f32")
    emb = bf16.encode(TEXTS, batch_size=16)
    assert _cos(emb, reference).min() > 0.98
    if has_bf16:
        assert np.abs(emb - f32.encode(TEXTS, batch_size=16)).max() > 1e-6  # the float ops did change


@needs_ov
def test_openvino_smooth_quant_alpha_is_its_own_variant_and_recorded(encoder, reference, cache):
    """runtime.smooth_quant sets NNCF's SmoothQuant alpha for matmuls: another quantized model (another cache
    entry, other outputs), recorded in the conversion block; the default keeps the earlier key."""
    default, d_info = build_runtime(encoder, _cfg("openvino", "int8"), cache, "tiny64", CALIBRATION)
    off, o_info = build_runtime(encoder, _cfg("openvino", "int8", smooth_quant=-1), cache, "tiny64", CALIBRATION)
    assert o_info["cache_key"] != d_info["cache_key"] and not o_info["cached"]
    assert d_info["conversion"]["smooth_quant"] == "nncf default" and o_info["conversion"]["smooth_quant"] == -1
    emb = off.encode(TEXTS, batch_size=16)
    assert _cos(emb, reference).min() > 0.99
    assert np.abs(emb - default.encode(TEXTS, batch_size=16)).max() > 1e-6


INT8_DYNAMIC_OR_PTQ = [("onnx", "dynamic_int8"), ("openvino", "int8")]


@pytest.mark.parametrize(("name", "quantize"), [pytest.param(*m, marks=_mark(m[0])) for m in INT8_DYNAMIC_OR_PTQ])
def test_float_down_proj_keeps_one_matmul_per_layer_in_float(encoder, reference, cache, name, quantize):
    """runtime.float_down_proj: the FFN down-projections (one per layer) stay float, the other weight MatMuls
    stay integer; another cache entry, the count recorded."""
    full, f_info = build_runtime(encoder, _cfg(name, quantize), cache, "tiny64", CALIBRATION)
    kept, k_info = build_runtime(encoder, _cfg(name, quantize, float_down_proj=True), cache, "tiny64", CALIBRATION)
    layers = encoder.model.config.num_hidden_layers
    assert k_info["cache_key"] != f_info["cache_key"]
    assert k_info["conversion"]["fp32_matmuls_kept"] == layers and f_info["conversion"]["fp32_matmuls_kept"] == 0
    folder, full_folder = kept.files[0].parent, full.files[0].parent
    if name == "onnx":
        import onnx

        def count(f: Path) -> int:
            return Counter(n.op_type for n in onnx.load(str(f / "model.onnx")).graph.node)["MatMulInteger"]

        assert count(full_folder) - count(folder) == layers and count(folder) > 0
    else:
        fq = (folder / "model.xml").read_text().count('type="FakeQuantize"')
        assert 0 < fq < (full_folder / "model.xml").read_text().count('type="FakeQuantize"')
    assert _cos(kept.encode(TEXTS, batch_size=16), reference).min() > 0.99


@pytest.mark.parametrize(("name", "quantize"), [("onnx", "static_int8"), ("openvino", "int8")])
def test_calibrated_modes_need_texts(encoder, cache, name, quantize):
    with pytest.raises(InputError, match="needs calibration texts"):
        build_runtime(encoder, _cfg(name, quantize), cache, "tiny64", None)


def test_sigkilled_build_leaves_debris_the_next_build_sweeps(tmp_path):
    """A build killed with SIGKILL cannot clean up after itself: its temp folder is removed by the next
    build once its process is gone, while a live process's temp folder is left alone."""
    import socket

    root = tmp_path / "runtime"
    root.mkdir()
    script = (
        "import sys, time; from pathlib import Path; from medret.runtime.cache import build_atomic; "
        "build_atomic(Path(sys.argv[1]) / 'k1', lambda tmp: (print('building', flush=True), time.sleep(60)))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "building"  # the temp folder exists now
    proc.kill()
    proc.wait()
    debris = [p.name for p in root.iterdir()]
    assert len(debris) == 1 and debris[0].startswith(".k1.tmp-")
    live = root / f".k2.tmp-{socket.gethostname()}-{os.getpid()}-0123abcd"  # a build in progress
    live.mkdir()
    gone = cache_mod.sweep_debris(root)
    assert [p.name for p in gone] == debris
    assert sorted(p.name for p in root.iterdir()) == [live.name]


@needs_ort
def test_second_build_reuses_the_cache_without_exporting(encoder, cache, monkeypatch):
    first = build_runtime(encoder, _cfg("onnx", "dynamic_int8"), cache, "tiny64")[1]

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(exported_mod, "export_onnx", no_export)
    rt, info = build_runtime(encoder, _cfg("onnx", "dynamic_int8"), cache, "tiny64")
    assert info["cached"] and info["export_cached"] and info["export_s"] == 0.0
    assert info["cache_key"] == first["cache_key"]
    # other weights are another key: the monkeypatched exporter is reached
    with pytest.raises(AssertionError, match="exported again"):
        build_runtime(encoder, _cfg("onnx", "none"), cache, "other-weights")
    assert not [p for p in (cache / "runtime").iterdir() if ".tmp-" in p.name]  # the failed build left nothing


@needs_ort
def test_killed_quantization_is_not_read_as_done(encoder, cache, monkeypatch):
    from medret.runtime import onnx_backend

    calibration = CALIBRATION[:10]  # another calibration sample: another key, not built yet
    before = sorted(p.name for p in (cache / "runtime").iterdir())

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_backend, "quantize", crash)
    with pytest.raises(KeyboardInterrupt):
        build_runtime(encoder, _cfg("onnx", "static_int8"), cache, "tiny64", calibration)
    assert sorted(p.name for p in (cache / "runtime").iterdir()) == before  # no half-built folder, no debris
    monkeypatch.undo()
    info = build_runtime(encoder, _cfg("onnx", "static_int8"), cache, "tiny64", calibration)[1]
    assert not info["cached"] and info["export_cached"] and info["calibration_texts"] == 10


@needs_ort
def test_query_side_settings_share_the_session(encoder, cache):
    rt, _ = build_runtime(encoder, _cfg("onnx", "none"), cache, "tiny64")
    qset = replace(encoder.settings, prefix="query: ", max_length=16)
    q = rt.with_settings(qset)
    assert q.run is rt.run and rt.settings == encoder.settings
    torch_q = load_retriever(
        ModelConfig(name="t", path=encoder.path, query_prefix="query: ", query_max_length=16, max_length=48)
    ).query
    np.testing.assert_allclose(q.encode(TEXTS[:10], 4), torch_q.encode(TEXTS[:10], 4), atol=2e-5)


@needs_ort
def test_medret_quantized_weights_export_as_simulated_fp32(tiny64, tmp_path):
    from medret.quant import quantize_retriever
    from medret.quant.linear import QuantLinear

    r = load_retriever(ModelConfig(name="tiny", path=str(tiny64), max_length=48, device="cpu"))
    quantize_retriever(r, QuantConfig(name="uniform", bits=4, granularity="group", group_size=32))
    n_quant = sum(isinstance(m, QuantLinear) for m in r.doc.model.modules())
    assert n_quant > 0
    rt, info = build_runtime(r.doc, _cfg("onnx", "none"), tmp_path, "tiny64+uniform4")
    assert info["quantization"] == "simulated" and info["from_medret_quant"]
    assert _cos(rt.encode(TEXTS, 16), r.doc.encode(TEXTS, 16)).min() > 0.99999
    # the torch model is untouched: still packed QuantLinear modules
    assert sum(isinstance(m, QuantLinear) for m in r.doc.model.modules()) == n_quant


@needs_ort
def test_bf16_cast_model_exports_fp32_of_its_weights(tiny64, tmp_path):
    r = load_retriever(ModelConfig(name="tiny", path=str(tiny64), max_length=48, device="cpu"))
    r.doc.model.to(torch.bfloat16)
    rt, info = build_runtime(r.doc, _cfg("onnx", "none"), tmp_path, "tiny64+bf16")
    assert info["source_dtype"] == "bfloat16" and info["quantization"] == "simulated"
    assert next(r.doc.model.parameters()).dtype == torch.bfloat16
    # the graph computes in fp32 with bf16-rounded weights; torch computes in bf16 throughout
    assert _cos(rt.encode(TEXTS, 16), r.doc.encode(TEXTS, 16)).min() > 0.99
