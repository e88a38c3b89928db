"""The two quant extension points, each extended from this file alone: a toy scheme and a toy rounding method
registered here run through evaluate on the tiny BERT; an unknown method is one error line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from medret.config import QuantConfig
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.quant import plan_quant, quant_identity, registry, validate
from medret.quant.options import grid_keys
from medret.quant.registry import Method, Scheme, method_names, names, register, register_method
from medret.quant.state import make_state
from tests.test_evaluate import ROOT, compose_cfg, tiny_overrides


def sign_quantize(w, spec, group_size, importance):
    """Two levels per group, -s and +s with s the group's mean |w| (or its max, under quant.symmetric=false)."""
    g = w.reshape(-1, group_size)
    scale = g.abs().mean(dim=1) if spec.symmetric else g.abs().amax(dim=1)
    return make_state(w, spec.bits, group_size, (g >= 0).to(torch.uint8), torch.tensor([[-1.0, 1.0]]), scale)


def floor_round(w, spec, group_size, importance):
    """Symmetric uniform levels, every weight rounded down (towards -inf) instead of to the nearest."""
    g = w.reshape(-1, group_size)
    qmax = 2 ** (spec.bits - 1) - 1
    scale = (g.abs().amax(dim=1) / qmax).clamp(min=1e-12).to(torch.float16).float()
    q = torch.clamp(torch.floor(g / scale[:, None]), -qmax - 1, qmax)
    levels = torch.arange(-(qmax + 1), qmax + 1, dtype=torch.float32)
    return make_state(w, spec.bits, group_size, (q + qmax + 1).to(torch.uint8), levels[None], scale)


@pytest.fixture
def toys():
    register(Scheme("test_sign", "custom", sign_quantize, options=("symmetric",)))
    register_method(Method("test_floor", fit=floor_round))
    try:
        yield
    finally:
        registry._SCHEMES.pop("test_sign")
        registry._METHODS.pop("test_floor")


def evaluate(tiny_bert, tmp_path, *quant: str) -> dict:
    cfg = compose_cfg(*tiny_overrides(tiny_bert, "logger=none", f"cache.dir={tmp_path / 'cache'}", *quant))
    return run_evaluate(cfg, tmp_path / "run")


def test_a_toy_scheme_runs_through_evaluate(toys, tiny_bert, tmp_path):
    assert "test_sign" in names("custom") and "symmetric" in grid_keys()
    res = evaluate(tiny_bert, tmp_path, "quant=uniform", "quant.name=test_sign", "quant.bits=2", "quant.group_size=16")
    q = res["quant"]
    assert q["scheme"] == "test_sign" and q["method"] == "rtn" and q["quantized_params"] > 0
    assert {layer["scheme"] for layer in q["layers"]} == {"test_sign"}
    assert q["model_bytes"] < q["fp32_model_bytes"] and "verdict" in res


def test_a_toy_rounding_method_runs_through_evaluate(toys, tiny_bert, tmp_path):
    assert "test_floor" in method_names()
    res = evaluate(
        tiny_bert, tmp_path, "quant=uniform", "quant.bits=4", "quant.group_size=16", "quant.method=test_floor"
    )
    q = res["quant"]
    assert q["method"] == "test_floor" and {layer["method"] for layer in q["layers"]} == {"test_floor"}
    assert q["calibration_texts_used"] == 0 and "verdict" in res
    # the method is part of the weights' identity (cache keys): never the round-to-nearest run's embeddings
    assert quant_identity(QuantConfig(name="uniform", bits=4, method="test_floor"))["method"] == "test_floor"
    rtn = evaluate(tiny_bert, tmp_path / "rtn", "quant=uniform", "quant.bits=4", "quant.group_size=16")["quant"]
    assert [x["mse"] for x in q["layers"]] != [x["mse"] for x in rtn["layers"]]


def test_the_plan_resolves_the_options_once():
    plan = plan_quant(QuantConfig(name="fp16", bits=8))
    assert plan.config.bits is None and plan.scheme.kind == "cast" and plan.method.name == "rtn"
    assert plan.cache_key == quant_identity(plan.config) and not plan.needs_calibration
    gptq = plan_quant(QuantConfig(name="nf", bits=3, method="gptq"))
    assert gptq.needs_calibration and gptq.method.options == ("gptq_damp", "act_order")
    assert plan_quant(QuantConfig()).cache_key == {"name": "none"}


def test_an_unknown_method_is_one_error_line(tmp_path):
    with pytest.raises(InputError, match=r"^quant.method='nope': expected rtn, gptq or hqq$"):
        validate(QuantConfig(name="uniform", bits=4, method="nope"))
    with pytest.raises(InputError, match="quant.method='nope'"):  # under any scheme, not only the custom ones
        validate(QuantConfig(name="none", method="nope"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "quant=uniform", "quant.method=nope"]
        + ["model.path=/nonexistent-model-dir", "logger=none", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: quant.method='nope': expected rtn, gptq or hqq"]
    assert "Traceback" not in proc.stderr
