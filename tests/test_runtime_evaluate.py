"""The runtime stage inside evaluate: a deployable form's quality, size and cache, end to end."""

from __future__ import annotations

import json

import pytest

from medret.errors import InputError
from medret.evaluation import run_evaluate
from tests.test_evaluate import compose_cfg, tiny_overrides

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def test_onnx_dynamic_int8_run_reports_the_deployed_form_and_reuses_its_export(tiny_bert, tmp_path):
    common = ("logger=none", f"cache.dir={tmp_path / 'cache'}", "runtime=onnx", "runtime.quantize=dynamic_int8")
    first = run_evaluate(compose_cfg(*tiny_overrides(tiny_bert, *common)), tmp_path / "a")
    rt = first["runtime"]
    assert rt["name"] == "onnx" and rt["quantize"] == "dynamic_int8" and rt["quantization"] == "deployed"
    assert 0 < rt["bytes_on_disk"] < first["quant"]["fp32_model_bytes"] / 2  # int8 weights on disk
    assert rt["cached"] is False and "onnxruntime" in json.dumps(rt["versions"])
    # judged against the fp32 torch baseline like any quantized run
    assert "verdict" in first and first["fidelity"]["embedding_cosine"]["mean"] > 0.95
    again = run_evaluate(compose_cfg(*tiny_overrides(tiny_bert, *common)), tmp_path / "b")
    assert again["runtime"]["cached"] is True
    assert again["throughput"]["shards_cached"] == 1  # keyed by the runtime: its own embeddings, reused
    assert again["metrics"] == first["metrics"]
    torch_run = run_evaluate(
        compose_cfg(*tiny_overrides(tiny_bert, "logger=none", f"cache.dir={tmp_path / 'cache'}")), tmp_path / "c"
    )
    assert torch_run["runtime"]["name"] == "torch"
    assert torch_run["throughput"]["shards_cached"] == 1  # the fp32 baseline's shards, not the int8 ones
    assert torch_run["metrics"] != first["metrics"] or first["fidelity"]["embedding_cosine"]["min"] > 0.9999


@pytest.mark.parametrize(
    "override, message",
    [
        ("runtime.name=tensorrt", "runtime.name='tensorrt'"),
        ("runtime.quantize=int4_weights", "runtime.quantize"),  # an OpenVINO mode asked of ONNX Runtime
    ],
)
def test_bad_runtime_options_fail_before_any_model_loads(tmp_path, override, message):
    cfg = compose_cfg("runtime=onnx", override, "model.path=/nonexistent/model")
    with pytest.raises(InputError, match=message):
        run_evaluate(cfg, tmp_path)
