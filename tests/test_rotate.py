"""quant.rotate=hadamard: the rotation is orthogonal and exact (every architecture's embeddings unchanged before
rounding), spreads planted outlier columns so 2-3 bit rounding loses less of W x, composes with rtn, gptq and
refinement, stores only a seed (same bits/param), saves and loads packed, decodes once without run-time cost,
and its bad options are one error line; at rotate=none nothing (cache keys included) changes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.models.saving import save_quantized
from medret.quant import decode_resident, quant_identity, quantize_retriever, validate
from medret.quant.gptq import gptq_quantize, layer_output_error
from medret.quant.layers import custom_layer
from medret.quant.linear import QuantLinear
from medret.quant.options import run_fields
from medret.quant.rotate import RotatedLinear, Rotation, block_size, hadamard, layer_seed, rotated_dense
from medret.quant.select import select_linears
from medret.quant.state import dequantize
from tests.test_architectures_quant import CALIBRATION, PROBE, cosine, load, models  # noqa: F401 (fixture)
from tests.test_evaluate import compose_cfg
from tests.test_gptq import NOTES, layer_inputs, tiny_retriever
from tests.tiny_models import ARCHITECTURES

HADAMARD = {"rotate": "hadamard"}


def explicit(rot: Rotation) -> torch.Tensor:
    """R as a dense matrix: blockdiag(H_b / sqrt(b)) diag(signs)."""
    g = torch.Generator().manual_seed(rot.seed)
    signs = torch.randint(0, 2, (rot.n,), generator=g).float() * 2 - 1
    blocks = torch.block_diag(*[hadamard(rot.block) / rot.block**0.5] * (rot.n // rot.block))
    return blocks @ torch.diag(signs)


@pytest.mark.parametrize("n, block", [(32, 32), (96, 32), (384, 128), (1536, 128), (768, 128), (16, 16)])
def test_rotation_is_the_orthogonal_block_hadamard_it_describes(n, block):
    rot = Rotation(n, layer_seed(0, "encoder.layer.0.attention.self.query"))
    assert rot.block == block_size(n) == block
    r = explicit(rot)
    torch.testing.assert_close(r @ r.T, torch.eye(n), atol=1e-5, rtol=0)
    x = torch.randn(5, 3, n, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rot.apply(x), x @ r.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rot.apply_t(rot.apply(x)), x, atol=1e-5, rtol=1e-5)
    h = layer_inputs(200, n).T @ layer_inputs(200, n)
    torch.testing.assert_close(rot.hessian(h), r @ h @ r.T, atol=1e-3, rtol=1e-4)
    assert rot.describe() == {"kind": "hadamard", "in": n, "block": block, "seed": rot.seed}
    assert layer_seed(0, "a") != layer_seed(0, "b") and layer_seed(0, "a") != layer_seed(1, "a")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rotation_alone_leaves_every_architecture_embeddings_unchanged(models, arch):  # noqa: F811
    """W R^T on R x for every selected linear, nothing rounded: the same function to float precision."""
    r = load(models[arch])
    fp32 = r.doc.encode(PROBE, 4)
    model = r.doc.model
    names = select_linears(model, QuantConfig())
    for i, name in enumerate(names):
        lin = model.get_submodule(name)
        model.set_submodule(name, rotated_dense(lin, Rotation(lin.in_features, layer_seed(i, name))), strict=True)
    assert sum(isinstance(m, RotatedLinear) for m in model.modules()) == len(names) > 0
    np.testing.assert_allclose(r.doc.encode(PROBE, 4), fp32, atol=2e-6)


def outlier_layer(seed: int = 0) -> tuple[nn.Linear, torch.Tensor]:
    """A 384-wide layer whose 6 input columns are 12x the rest (as LayerNorm-fed transformer weights have), and
    inputs with the matching outlier channels."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(384, 96)
    w = 0.04 * torch.randn(96, 384, generator=g)
    cols = torch.randperm(384, generator=g)[:6]
    w[:, cols] *= 12
    lin.weight.data = w
    x = layer_inputs(2000, 384, seed)
    x[:, cols[:3]] *= 4
    return lin.requires_grad_(False), x


def output_sqnr(lin: nn.Linear, mod: nn.Module, x: torch.Tensor) -> float:
    y = x @ lin.weight.T
    return 10 * torch.log10(y.pow(2).sum() / (mod(x) - lin(x) + lin.bias).pow(2).sum()).item()


def gaussian_layer(seed: int = 3) -> nn.Linear:
    lin = nn.Linear(384, 96)
    lin.weight.data = 0.04 * torch.randn(96, 384, generator=torch.Generator().manual_seed(seed))
    return lin.requires_grad_(False)


@pytest.mark.parametrize("bits", [2, 3])
@pytest.mark.parametrize("name", ["nf", "uniform"])
def test_rotation_spreads_planted_outlier_columns_and_keeps_more_of_w_x(bits, name):
    """Measured SQNR of W x (dB, plain -> rotated): 3 bits nf 17.1 -> 22.6, uniform 15.5 -> 21.4; 2 bits nf
    11.3 -> 13.0, uniform 9.9 -> 10.1 (4 levels: unrotated, each outlier is exact and sets its group's scale;
    rotated, every weight is coarse). Without outliers the rotation is neutral (within 0.2 dB)."""
    lin, x = outlier_layer()
    spec = QuantConfig(name=name, bits=bits, group_size=64)
    cpu = torch.device("cpu")
    plain, rep = custom_layer("ffn", lin, spec, cpu, None)
    rotated, rep_rot = custom_layer("ffn", lin, replace(spec, **HADAMARD), cpu, None)
    assert isinstance(plain, QuantLinear) and isinstance(rotated, RotatedLinear)
    assert rep_rot["rotate"] == "hadamard" and "rotate" not in rep
    assert rep_rot["effective_bits"] == rep["effective_bits"]  # the rotation stores nothing
    gain = output_sqnr(lin, rotated, x) - output_sqnr(lin, plain, x)
    assert gain > (3.0 if bits == 3 else 0.0), (name, bits, gain)
    if bits == 3:  # the weight error itself (the same in either basis)
        assert rep_rot["sqnr_db"] > rep["sqnr_db"] + 3.0
    flat = gaussian_layer()
    neutral = [
        output_sqnr(flat, custom_layer("f", flat, s, cpu, None)[0], x) for s in (spec, replace(spec, **HADAMARD))
    ]
    assert abs(neutral[1] - neutral[0]) < 0.3, neutral


def test_gptq_in_the_rotated_basis_is_the_output_error_of_the_original_layer():
    """GPTQ of W R^T against R H R^T: the error it reports is that of Q R on the unrotated inputs."""
    lin, x = outlier_layer(1)
    rot = Rotation(384, 7)
    h = 2 * x.T @ x / len(x)
    spec = QuantConfig(name="nf", bits=3, group_size=64)
    state = gptq_quantize(rot.apply(lin.weight), rot.hessian(h), spec, 64)
    q = dequantize(state)
    direct = (x @ lin.weight.T - x @ rot.apply_t(q).T).pow(2).sum().item() * 2 / len(x)
    assert layer_output_error(rot.apply(lin.weight), q, rot.hessian(h)) == pytest.approx(direct, rel=1e-3)
    plain = dequantize(gptq_quantize(lin.weight, h, spec, 64))
    assert direct < 0.6 * layer_output_error(lin.weight, plain, h)


CONFIGS = {
    "rtn": QuantConfig(name="nf", bits=3, group_size=16, **HADAMARD),
    "gptq_act_order": QuantConfig(
        name="kmeans", bits=3, group_size=16, method="gptq", act_order=True, calibration_texts=16, **HADAMARD
    ),
    "gptq_refine": QuantConfig(
        name="uniform", bits=3, group_size=16, method="gptq", refine_steps=3, calibration_texts=16, **HADAMARD
    ),
}


@pytest.mark.parametrize("key", list(CONFIGS))
def test_rotated_model_saves_loads_and_decodes_once_to_the_same_embeddings(tiny_bert, tmp_path, key):
    cfg = CONFIGS[key]
    r = tiny_retriever(tiny_bert)
    fp32 = r.doc.encode(NOTES, 8)
    info = quantize_retriever(r, cfg, calibration=NOTES)
    plain = quantize_retriever(tiny_retriever(tiny_bert), replace(cfg, rotate="none", refine_steps=0), NOTES)
    assert info["effective_bits_per_param"] == plain["effective_bits_per_param"]  # a seed, no stored bits
    assert info["model_bytes"] == plain["model_bytes"]
    assert all(x["rotate"] == "hadamard" for x in info["layers"]) and len(info["layers"]) == 12
    if cfg.method == "gptq":
        assert sum(x["output_mse"] for x in info["layers"]) < sum(x["output_mse_rtn"] for x in info["layers"])
    if cfg.refine_steps:
        assert info["refine"][0]["fitted_params"] > 0
    rotated = {n for n, m in r.doc.model.named_modules() if isinstance(m, RotatedLinear)}
    packed = {n for n, m in r.doc.model.named_modules() if isinstance(m, QuantLinear)}
    assert len(rotated) == 12 and packed == {f"{n}.inner" for n in rotated}
    per_forward = r.doc.encode(NOTES, 8)
    assert cosine(per_forward, fp32) > 0.9
    out = save_quantized(r, tmp_path / "saved", info)
    manifest = json.loads((out / "medret_quant.json").read_text())
    assert set(manifest["rotations"]) == rotated and set(manifest["modules"]) == packed
    loaded = tiny_retriever(out)
    mine = {n: m for n, m in r.doc.model.named_modules() if isinstance(m, (QuantLinear, RotatedLinear))}
    theirs = {n: m for n, m in loaded.doc.model.named_modules() if isinstance(m, (QuantLinear, RotatedLinear))}
    assert set(mine) == set(theirs)
    for n, m in mine.items():
        if isinstance(m, QuantLinear):
            assert torch.equal(dequantize(m.state()), dequantize(theirs[n].state())), n
        else:
            assert m.rotation == theirs[n].rotation, n
    np.testing.assert_allclose(loaded.doc.encode(NOTES, 8), per_forward, atol=1e-6)
    resident = decode_resident(r, QuantConfig(decode="once"))  # R folded into dense weights
    assert resident["decoded_modules"] == 12
    assert not any(isinstance(m, (RotatedLinear, QuantLinear)) for m in r.doc.model.modules())
    np.testing.assert_allclose(r.doc.encode(NOTES, 8), per_forward, atol=1e-5)


def test_the_seed_draws_the_rotation(tiny_bert):
    def codes(seed: int) -> list[torch.Tensor]:
        r = tiny_retriever(tiny_bert)
        quantize_retriever(r, QuantConfig(name="nf", bits=3, group_size=16, rotate_seed=seed, **HADAMARD))
        return [m.planes for m in r.doc.model.modules() if isinstance(m, QuantLinear)]

    a, b, c = codes(0), codes(0), codes(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_rotate_none_keeps_identities_and_hadamard_keys_them():
    base = QuantConfig(name="nf", bits=3)
    assert quant_identity(base) == quant_identity(replace(base, rotate_seed=5))  # no rotation: the seed is idle
    assert "rotate" not in quant_identity(base) and "rotate_seed" not in quant_identity(base)
    ident = quant_identity(replace(base, **HADAMARD))
    assert ident["rotate"] == "hadamard" and "rotate_seed" not in ident  # seed 0 is the quiet default
    assert quant_identity(replace(base, rotate_seed=1, **HADAMARD))["rotate_seed"] == 1
    assert {"rotate", "rotate_seed"} <= set(run_fields())  # quant=auto rotates as the run says
    validate(replace(base, overrides={"*.query": {"name": "none"}}, **HADAMARD))  # a layer left fp32: nothing to rotate


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"rotate": "random"}, "quant.rotate='random': expected none or hadamard"),
        ({"rotate_seed": "a"}, "quant.rotate_seed='a': expected an integer"),
        ({"name": "bnb_int8", "bits": 8, **HADAMARD}, "quant.rotate=hadamard: rotates the weights the custom"),
        ({"name": "fp16", **HADAMARD}, "not quant=fp16"),
        ({"name": "fisher_kmeans", "bits": 3, **HADAMARD}, "fisher_kmeans's Fisher weights are of unrotated"),
        ({"overrides": {"*.query": {"rotate": "yes"}}}, "quant.rotate='yes'"),
    ],
)
def test_bad_rotate_options_are_input_errors(cfg, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        validate(QuantConfig(**{"name": "nf", "bits": 3, **cfg}), "cpu")


def test_a_layer_too_narrow_to_rotate_is_one_error_before_rounding(tmp_path):
    from tests.test_architectures_quant import VOCAB
    from tests.tiny_models import build_tiny_encoder

    r = load(build_tiny_encoder(tmp_path / "bert12", "bert", VOCAB, hidden=12, layers=1))  # 12 = 3 x 4
    with pytest.raises(InputError, match=r"in_features=12, whose largest power-of-two factor 4 is under 8"):
        quantize_retriever(r, QuantConfig(name="nf", bits=3, granularity="channel", **HADAMARD))
    assert not any(isinstance(m, QuantLinear) for m in r.doc.model.modules())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gptq_with_rotation_on_every_architecture(models, arch):  # noqa: F811
    """Fused Wqkv (ModernBERT), ELECTRA's 16-wide embeddings_project, DistilBERT's names: every linear rotated,
    rounded by GPTQ in its rotated basis, and decoding once folds R back to the same embeddings."""
    r = load(models[arch])
    fp32 = r.doc.encode(PROBE, 4)
    cfg = QuantConfig(name="nf", bits=4, group_size=16, method="gptq", calibration_texts=12, **HADAMARD)
    n = len(select_linears(r.doc.model, QuantConfig()))
    info = quantize_retriever(r, cfg, CALIBRATION)
    assert len(info["layers"]) == sum(isinstance(m, RotatedLinear) for m in r.doc.model.modules()) == n
    assert sum(x["output_mse"] for x in info["layers"]) < sum(x["output_mse_rtn"] for x in info["layers"])
    per_forward = r.doc.encode(PROBE, 4)
    assert decode_resident(r, cfg)["decoded_modules"] == n
    np.testing.assert_allclose(r.doc.encode(PROBE, 4), per_forward, atol=1e-5)
    assert cosine(per_forward, fp32) > 0.97


def test_evaluate_rotates_saves_and_the_saved_model_gives_the_same_metrics(models, tmp_path):  # noqa: F811
    """Through evaluate.py's config (quant.rotate on the command line): GPTQ + refinement on ModernBERT (bias-free
    fused Wqkv), saved packed, evaluated again as model.path without re-quantizing."""
    base = ["model.name=tiny", "model.max_length=32", "logger=none", "data.num_records=60", "data.num_queries=12"]
    base += ["eval.k_values=[1,10]", f"cache.dir={tmp_path / 'cache'}"]
    saved = tmp_path / "saved"
    quant = ["quant=nf", "quant.bits=3", "quant.group_size=16", "quant.method=gptq", "quant.refine_steps=2"]
    quant += ["quant.rotate=hadamard", "quant.rotate_seed=4", f"quant.save_dir={saved}"]
    res = run_evaluate(compose_cfg(*base, f"model.path={models['modernbert']}", *quant), tmp_path / "q")
    q = res["quant"]
    assert all(x["rotate"] == "hadamard" for x in q["layers"]) and len(q["layers"]) == 8
    assert res["config"]["quant"]["rotate"] == "hadamard" and res["config"]["quant"]["rotate_seed"] == 4
    seeds = {v["seed"] for v in json.loads((saved / "medret_quant.json").read_text())["rotations"].values()}
    assert len(seeds) == 8  # each layer its own signs
    again = run_evaluate(compose_cfg(*base, f"model.path={saved}"), tmp_path / "loaded")
    assert again["quant"]["loaded_packed"] and again["metrics"] == res["metrics"]
