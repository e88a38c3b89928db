"""quant.method=gptq|hqq: GPTQ's output error measured against round-to-nearest on the same grids,
stored and reloaded packed, through evaluate, and its bad options; HQQ through the hqq package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from medret.config import ModelConfig, QuantConfig, register_configs
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.models import load_retriever
from medret.models.saving import save_quantized
from medret.quant import hqq_method, quant_identity, quantize_retriever, scheme, validate
from medret.quant.gptq import gptq_quantize
from medret.quant.linear import QuantLinear
from medret.quant.state import dequantize

ROOT = Path(__file__).resolve().parents[1]
NOTES = [
    f"patient {i} with {a} and {b} on metformin daily, no chest pain, hba1c {7 + i % 5}.{i % 10} %"
    for i, (a, b) in enumerate(
        [("diabetes", "hypertension"), ("asthma", "copd"), ("heart failure", "anemia"), ("gout", "stroke")] * 6
    )
]


def layer_inputs(n: int = 1500, d_in: int = 96, seed: int = 0) -> torch.Tensor:
    """Correlated inputs, as a transformer's hidden states are: GPTQ has errors to compensate along them."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / d_in**0.5
    return torch.randn(n, d_in, generator=g) @ mix + 0.3 * torch.randn(n, d_in, generator=g)


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return (x @ w.T - x @ w_hat.T).norm().item()


GRIDS = [
    QuantConfig(name="uniform", bits=3, symmetric=False),
    QuantConfig(name="nf", bits=3),
    QuantConfig(name="kmeans", bits=3, kmeans_iters=10),
]


@pytest.mark.parametrize("spec", GRIDS, ids=lambda s: s.name)
@pytest.mark.parametrize("group_size", [32, 96], ids=["group32", "channel"])
def test_gptq_lowers_layer_output_error_against_round_to_nearest(spec, group_size):
    x = layer_inputs()
    w = 0.05 * torch.randn(64, 96, generator=torch.Generator().manual_seed(1))
    h = 2 * x.T @ x / len(x)
    rtn = scheme(spec.name).quantize(w, spec, group_size, None)
    e_rtn = output_error(x, w, dequantize(rtn))
    for act_order in (False, True):
        state = gptq_quantize(w, h, spec, group_size, act_order=act_order)
        assert state.shape == rtn.shape and state.effective_bits() == rtn.effective_bits()  # same format, same size
        assert output_error(x, w, dequantize(state)) < 0.95 * e_rtn, (spec.name, act_order)
    # act-order fits every group's grid up front on the original weights: exactly round-to-nearest's grid
    static = gptq_quantize(w, h, spec, group_size, act_order=True)
    for t in ("codebook", "scale", "offset"):
        a, b = getattr(static, t), getattr(rtn, t)
        assert (a is None and b is None) or torch.equal(a, b)


def test_group_grids_are_fitted_on_the_error_updated_weights():
    x, spec = layer_inputs(), QuantConfig(name="uniform", bits=3, symmetric=False)
    w = 0.05 * torch.randn(64, 96, generator=torch.Generator().manual_seed(2))
    state = gptq_quantize(w, 2 * x.T @ x / len(x), spec, 32)
    rtn = scheme("uniform").quantize(w, spec, 32, None)
    scale, scale_rtn = state.scale.view(64, 3), rtn.scale.view(64, 3)
    assert torch.equal(scale[:, 0], scale_rtn[:, 0])  # the first group sees no error yet
    assert not torch.equal(scale[:, 1:], scale_rtn[:, 1:])  # later groups: fitted within the pass


@pytest.mark.parametrize("spec", [QuantConfig(name="uniform", bits=8), QuantConfig(name="kmeans", bits=8)])
def test_gptq_is_exact_when_the_grid_is_fine(spec):
    x = layer_inputs()
    w = 0.05 * torch.randn(64, 96, generator=torch.Generator().manual_seed(3))
    state = gptq_quantize(w, 2 * x.T @ x / len(x), spec, 32)
    signal = (x @ w.T).norm().item()
    e_gptq = output_error(x, w, dequantize(state))
    e_rtn = output_error(x, w, dequantize(scheme(spec.name).quantize(w, spec, 32, None)))
    assert e_gptq <= 1.05 * e_rtn and e_gptq < 5e-3 * signal
    if spec.name == "kmeans":  # 256 levels for 32 weights: each weight its own level, up to fp16
        assert e_gptq < 1e-3 * signal


def tiny_retriever(path: Path):
    return load_retriever(ModelConfig(name="t", path=str(path), device="cpu"))


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(name="kmeans", bits=3, group_size=16, method="gptq", act_order=True, calibration_texts=16),
        QuantConfig(name="nf", bits=3, granularity="channel", method="gptq", calibration_texts=16),
        QuantConfig(name="uniform", bits=3, granularity="tensor", method="gptq", calibration_texts=16),
    ],
    ids=["kmeans-group16-act-order", "nf-channel", "uniform-tensor"],
)
def test_gptq_model_saves_and_loads_the_same_weights(tiny_bert, tmp_path, cfg):
    r = tiny_retriever(tiny_bert)
    info = quantize_retriever(r, cfg, calibration=NOTES)
    assert info["method"] == "gptq" and info["calibration_texts_used"] == 16 and info["quantize_s"] > 0
    assert info["act_order"] == cfg.act_order and info["gptq_damp"] == 0.01
    layers = info["layers"]
    assert len(layers) == 12 and all(x["method"] == "gptq" for x in layers)
    # measured on the calibration tokens: GPTQ beats round-to-nearest on the same scheme overall
    assert sum(x["output_mse"] for x in layers) < sum(x["output_mse_rtn"] for x in layers)
    out = save_quantized(r, tmp_path / "saved", info)
    loaded = tiny_retriever(out)
    mine = {n: m for n, m in r.doc.model.named_modules() if isinstance(m, QuantLinear)}
    theirs = {n: m for n, m in loaded.doc.model.named_modules() if isinstance(m, QuantLinear)}
    assert set(mine) == set(theirs) and len(mine) == 12
    for n, m in mine.items():
        assert torch.equal(dequantize(m.state()), dequantize(theirs[n].state())), n
    torch.testing.assert_close(torch.as_tensor(loaded.doc.encode(NOTES, 8)), torch.as_tensor(r.doc.encode(NOTES, 8)))


def test_hqq_states_decode_as_the_hqq_package_does():
    from hqq.core.quantize import Quantizer

    assert set(hqq_method.BITS) == {b for b in Quantizer.SUPPORTED_BITS if b in range(2, 9)}
    w = 0.05 * torch.randn(48, 64, generator=torch.Generator().manual_seed(4))
    for bits in (2, 3, 4):
        spec = QuantConfig(name="uniform", bits=bits, symmetric=False, method="hqq")
        state = hqq_method.quantize(w, spec, 32)
        codes, meta = Quantizer.quantize(w, nbits=bits, group_size=32, axis=1, bitpack=False, device="cpu")
        ref = Quantizer.dequantize(codes, {**meta, "compute_dtype": torch.float32})
        step = meta["scale"].max().item()
        assert (dequantize(state) - ref).abs().max().item() < 0.02 * step  # fp16 scale and offset storage
        # HQQ's fitted zero and scale beat min/max on the weights
        mse = (dequantize(state) - w).pow(2).mean()
        assert mse < (dequantize(scheme("uniform").quantize(w, spec, 32, None)) - w).pow(2).mean()


def compose_cfg(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


def tiny_evaluate(tiny_bert: Path, tmp_path: Path, *quant: str) -> dict:
    """An evaluate run of the tiny BERT on a small synthetic set, with these quant overrides."""
    small = ["model=minilm", f"model.path={tiny_bert}", "model.name=tiny", "data.num_records=120"]
    small += ["data.num_queries=20", "eval.k_values=[1,10]", "logger=none", f"cache.dir={tmp_path / 'cache'}"]
    return run_evaluate(compose_cfg(*small, *quant), tmp_path / "run")


@pytest.mark.parametrize(
    "method", [["quant.method=gptq", "quant.act_order=true"], ["quant.method=hqq", "quant.symmetric=false"]]
)
def test_evaluate_runs_gptq_and_hqq(tiny_bert, tmp_path, method):
    res = tiny_evaluate(
        tiny_bert,
        tmp_path,
        "quant=uniform",
        "quant.bits=3",
        "quant.group_size=16",
        "quant.calibration_texts=24",
        *method,
    )
    q = res["quant"]
    name = method[0].split("=")[1]
    assert q["method"] == name and q["quantize_s"] > 0 and "verdict" in res
    assert all(x["method"] == name for x in q["layers"])
    assert q["calibration_texts_used"] == (24 if name == "gptq" else 0)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["quant"]
    assert saved["method"] == name


def test_rtn_cache_keys_are_unchanged_and_gptq_options_are_keyed():
    rtn = quant_identity(QuantConfig(name="uniform", bits=4))
    assert not {"method", "gptq_damp", "act_order"} & set(rtn)
    hqq = quant_identity(QuantConfig(name="uniform", bits=4, symmetric=False, method="hqq"))
    assert hqq["method"] == "hqq" and "gptq_damp" not in hqq
    gptq = quant_identity(QuantConfig(name="uniform", bits=4, method="gptq", act_order=True))
    assert gptq["method"] == "gptq" and gptq["act_order"] is True and gptq["gptq_damp"] == 0.01


@pytest.mark.parametrize(
    "cfg, message",
    [
        (QuantConfig(name="uniform", bits=3, method="awq"), "quant.method='awq': expected rtn, gptq or hqq"),
        (QuantConfig(name="outliers", base="nf", bits=3, method="gptq"), "quant.method=gptq: rounds to the grid of"),
        (QuantConfig(name="nf", bits=3, outlier_fraction=0.01, method="gptq"), "without outliers"),
        (QuantConfig(name="bnb_nf4", method="gptq"), "quant.method=gptq: needs a custom scheme"),
        (QuantConfig(name="nf", bits=3, method="gptq", calibration_texts=0), "quant.calibration_texts=0"),
        (QuantConfig(name="nf", bits=3, method="gptq", gptq_damp=0.0), "quant.gptq_damp=0.0"),
        (QuantConfig(name="nf", bits=3, method="hqq"), "quant.method=hqq: fits a uniform asymmetric grid"),
        (QuantConfig(name="uniform", bits=7, symmetric=False, method="hqq"), "quant.bits=7: method hqq supports"),
        (QuantConfig(name="uniform", bits=3, overrides={"*.query": {"method": "gptq", "name": "outliers"}}), "gptq"),
    ],
)
def test_bad_method_options_are_input_errors(cfg, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("*", r"\*")):
        validate(cfg)


def test_gptq_without_calibration_texts_is_an_input_error(tiny_bert):
    with pytest.raises(InputError, match="no calibration texts"):
        quantize_retriever(tiny_retriever(tiny_bert), QuantConfig(name="nf", bits=3, method="gptq"), calibration=[])


def test_cli_bad_method_is_one_error_line_before_the_model_loads(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "quant=nf", "quant.method=gptq", "quant.calibration_texts=0"]
        + ["model.path=/nonexistent-model-dir", "logger=none", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        timeout=300,
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: quant.calibration_texts=0: expected at least 2 corpus texts"]


def test_gptq_with_per_layer_overrides(tiny_bert):
    r = tiny_retriever(tiny_bert)
    cfg = QuantConfig(
        name="uniform",
        bits=3,
        group_size=16,
        method="gptq",
        calibration_texts=16,
        overrides={
            "*.query": {"bits": 8},
            "*.value": {"method": "rtn"},
            "encoder.layer.0.output.dense": {"name": "none"},
        },
    )
    layers = {x["name"]: x for x in quantize_retriever(r, cfg, calibration=NOTES)["layers"]}
    assert layers["encoder.layer.1.attention.self.query"]["bits"] == 8
    assert layers["encoder.layer.1.attention.self.value"]["method"] == "rtn"
    assert layers["encoder.layer.1.attention.self.key"]["method"] == "gptq"
    assert "encoder.layer.0.output.dense" not in layers and len(layers) == 11
    assert list(layers) == [n for n, m in r.doc.model.named_modules() if isinstance(m, QuantLinear)]


def test_gptq_on_a_layer_the_forward_never_runs_is_one_input_error():
    from medret.quant.gptq import _stages

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(InputError, match=r"1 selected layer\(s\) never run .*\(unused\).*quant.exclude"):
        _stages(TwoHeads(), ["used", "unused"], {"x": torch.randn(2, 4)})


def test_calibration_seed_draws_another_sample_and_other_weights(tiny_bert):
    from medret.quant import calibration_corpus

    base = QuantConfig(name="nf", bits=3, group_size=16, method="gptq", calibration_texts=8)
    other = QuantConfig(name="nf", bits=3, group_size=16, method="gptq", calibration_texts=8, calibration_seed=1)
    drawn = calibration_corpus(NOTES, base)
    assert len(drawn) == 8 and drawn == calibration_corpus(NOTES, base)
    assert set(calibration_corpus(NOTES, other)) != set(drawn)
    # seed 0 keeps the cache keys runs had before the option; another seed is other weights, another key
    assert "calibration_seed" not in quant_identity(base) and quant_identity(other)["calibration_seed"] == 1
    weights = []
    for cfg in (base, other):
        r = tiny_retriever(tiny_bert)
        info = quantize_retriever(r, cfg, calibration=calibration_corpus(NOTES, cfg))
        assert info["calibration_seed"] == cfg.calibration_seed
        weights.append({n: dequantize(m.state()) for n, m in r.doc.model.named_modules() if isinstance(m, QuantLinear)})
    assert any(not torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    with pytest.raises(InputError, match="quant.calibration_seed='x': expected an integer"):
        validate(QuantConfig(name="nf", bits=3, method="gptq", calibration_seed="x"))


def test_a_gptq_run_that_cannot_fit_says_so_before_the_fp32_pass(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDRET_AVAILABLE_MEMORY", "64K")  # the machine's figure replaced, as a shared node would
    with pytest.raises(InputError, match=r"quant.method=gptq .* needs about .* of host memory"):
        tiny_evaluate(tiny_bert, tmp_path, "quant=uniform", "quant.bits=3", "quant.method=gptq")
    assert not list((tmp_path / "cache").rglob("*.npz"))  # no fp32 baseline was computed first
