"""Every quantization path on the six architectures of tests/tiny_models.py (BERT, MPNet, RoBERTa, DistilBERT,
ELECTRA, ModernBERT): bitsandbytes int8/nf4, the custom schemes, the rounding methods (rtn, gptq with act-order,
hqq), embeddings, refinement, decode once / per forward, save -> load, a sensitivity scan and quant=auto, and
the memory check before GPTQ and refinement.

The count rule: every nn.Linear of the loaded encoder is quantized except those quant.exclude leaves by
default (``pooler.*``). Per block that is query, key, value, attention output, feed-forward in and out (ModernBERT:
fused Wqkv, Wo, the GLU's Wi, mlp.Wo), plus ELECTRA's embeddings_project: ``LINEARS`` states it per architecture.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from medret.config import ModelConfig, QuantConfig
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.models import load_retriever
from medret.models.saving import save_quantized
from medret.quant import decode_resident, gptq, memory, quantize_retriever
from medret.quant.auto import resolve_auto
from medret.quant.embedding import QuantEmbedding
from medret.quant.linear import QuantLinear
from medret.sensitivity import run_sensitivity
from tests.conftest import TINY_VOCAB
from tests.test_evaluate import ROOT, compose_cfg
from tests.test_gptq import NOTES
from tests.test_sensitivity import compose_scan
from tests.tiny_models import ARCHITECTURES, build_tiny_encoder

LAYERS = 2
LINEARS = {"bert": 12, "mpnet": 12, "roberta": 12, "distilbert": 12, "electra": 13, "modernbert": 8}
EXCLUDED = QuantConfig().exclude  # the pooler
VOCAB = TINY_VOCAB
CALIBRATION, PROBE = NOTES[:12], NOTES[12:20]
G = {"group_size": 16}  # hidden 32: groups that divide every layer's inputs
CAL = {"calibration_texts": 12}
# path -> (quant options, the least embedding cosine to fp32 and the least per-layer weight SQNR (dB) it must keep)
PATHS = {
    "bnb_int8": ({"name": "bnb_int8", "bits": 8}, 0.999, 35),
    # blocks of 32: the tiny models' rows are 32 or 64 wide (bitsandbytes' CPU kernels need whole blocks per row)
    "bnb_nf4": ({"name": "bnb_nf4", "bits": 4, "blocksize": 32}, 0.97, 15),
    "uniform8": ({"name": "uniform", "bits": 8, **G}, 0.999, 35),
    "nf4": ({"name": "nf", "bits": 4, **G}, 0.97, 18),
    "kmeans3": ({"name": "kmeans", "bits": 3, "granularity": "channel", "kmeans_iters": 5}, 0.95, 12),
    "outliers": (
        {"name": "outliers", "base": "kmeans", "bits": 3, "granularity": "channel", "outlier_fraction": 0.01},
        0.95,
        12,
    ),
    "fisher_kmeans": (
        {"name": "fisher_kmeans", "bits": 4, "granularity": "channel", "kmeans_iters": 5, **CAL},
        0.97,
        14,
    ),
    "gptq_act_order": ({"name": "uniform", "bits": 4, **G, "method": "gptq", "act_order": True, **CAL}, 0.97, 13),
    "gptq8": ({"name": "uniform", "bits": 8, **G, "method": "gptq", **CAL}, 0.999, 35),
    "hqq": ({"name": "uniform", "bits": 4, **G, "symmetric": False, "method": "hqq"}, 0.97, 18),
    "embeddings": ({"name": "nf", "bits": 4, **G, "embeddings": True}, 0.97, 18),
    "embeddings_bnb": ({"name": "bnb_int8", "bits": 8, "embeddings": True}, 0.999, 35),
    "refine": ({"name": "kmeans", "bits": 3, "granularity": "channel", "refine_steps": 3, **CAL}, 0.95, 12),
    "per_forward": ({"name": "nf", "bits": 4, **G, "decode": "per_forward"}, 0.97, 18),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    return {a: build_tiny_encoder(root / a, a, VOCAB, layers=LAYERS) for a in ARCHITECTURES}


def load(path: Path):
    return load_retriever(ModelConfig(name="tiny", path=str(path), max_length=32, pooling="mean", device="cpu"))


def expected_linears(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [n for n in names if not any(fnmatch.fnmatch(n, p) for p in EXCLUDED)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).mean())  # the encoders normalise: the dot product is the cosine


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_path_quantizes_every_linear_and_stays_close_to_fp32(models, arch, path, caplog):
    options, least, least_db = PATHS[path]
    cfg = QuantConfig(**options)
    r = load(models[arch])
    linears = expected_linears(r.doc.model)
    assert len(linears) == LINEARS[arch]  # the architecture's own count (see the module docstring)
    widths = {n: r.doc.model.get_submodule(n).in_features for n in linears}
    fp32 = r.doc.encode(PROBE, 4)
    info = quantize_retriever(r, cfg, CALIBRATION)
    layers = [x for x in info["layers"] if x["name"] in linears]
    assert [x["name"] for x in layers] == linears  # every one, in model order, none silently left fp32
    assert all(x["mse"] > 0 and np.isfinite(x["mse"]) for x in info["layers"])
    # ELECTRA's embeddings_project reads 16-wide rows: no bitsandbytes block fits, which is warned, not hidden
    short = {n for n, w in widths.items() if cfg.name == "bnb_nf4" and w % cfg.blocksize}
    assert bool(short) == (arch == "electra" and cfg.name == "bnb_nf4")
    assert bool(short) == ("decode wrong weights when a row (embeddings_project of this electra" in caplog.text)
    assert all(x["sqnr_db"] >= least_db for x in info["layers"] if x["name"] not in short), path
    left = [n for n, m in r.doc.model.named_modules() if type(m) is nn.Linear]
    assert all(any(fnmatch.fnmatch(n, p) for p in EXCLUDED) for n in left)  # only the pooler stays nn.Linear
    if cfg.embeddings:
        emb = r.doc.model.get_input_embeddings()
        assert len(info["layers"]) == len(linears) + 1 and type(emb) is not nn.Embedding
        assert isinstance(emb, QuantEmbedding) == (cfg.name == "nf")
    if cfg.method != "rtn":
        assert {x["method"] for x in layers} == {cfg.method}
    if cfg.method == "gptq":  # Hessian-weighted: below round-to-nearest's output error on the same grid, summed
        assert sum(x["output_mse"] for x in layers) < sum(x["output_mse_rtn"] for x in layers)
    if cfg.refine_steps:  # never worse than the rounding on the calibration texts: a worse fit is put back
        (refine,) = info["refine"]
        assert refine["steps"] == 3 and refine["fitted_params"] > 0
        assert refine["loss_after"] <= refine["loss_before"]
        assert refine.get("reverted", False) == (refine.get("loss_fitted", 0) > refine["loss_before"])
    per_forward = r.doc.encode(PROBE, 4)  # the packed modules decode on every forward
    resident = decode_resident(r, cfg)
    quantized = r.doc.encode(PROBE, 4)
    still_packed = sum(isinstance(m, (QuantLinear, QuantEmbedding)) for m in r.doc.model.modules())
    if cfg.decode == "per_forward":  # nothing decoded up front: the packed modules stay resident
        assert resident["decoded_modules"] == 0 and still_packed == len(linears) + cfg.embeddings
    else:  # each packed module (none for bitsandbytes) is now a dense fp32 one
        assert still_packed == 0 and resident["decoded_modules"] == sum(
            not x["scheme"].startswith("bnb") for x in info["layers"]
        )
    np.testing.assert_allclose(per_forward, quantized, atol=1e-5)  # the same numbers either way
    if cfg.refine_steps:  # reverted: exactly the plain rounding's model; kept: another one
        plain = load(models[arch])
        quantize_retriever(plain, replace(cfg, refine_steps=0), CALIBRATION)
        decode_resident(plain, cfg)
        same = np.array_equal(plain.doc.encode(PROBE, 4), quantized)
        assert same == info["refine"][0].get("reverted", False)
    assert not np.array_equal(quantized, fp32)  # the quantized layers are on the forward path
    assert cosine(quantized, fp32) >= least, cosine(quantized, fp32)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mixed_overrides_written_for_bert_names_are_one_error_line_elsewhere(models, arch):
    """conf/quant/mixed.yaml's patterns name BERT's modules (``*.attention.self.*``): BERT, RoBERTa and ELECTRA
    share them; on MPNet, DistilBERT and ModernBERT the pattern matches nothing, which is one line naming the
    pattern and the architecture (never a silently fp32 layer)."""
    mixed = QuantConfig(**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "quant" / "mixed.yaml")))
    r = load(models[arch])
    if arch in ("bert", "roberta", "electra"):
        info = quantize_retriever(r, mixed, CALIBRATION)
        bits = {x["name"]: x["bits"] for x in info["layers"]}
        assert set(bits.values()) == {3, 4} and not any(n.endswith("output.dense") for n in bits)
        return
    first = expected_linears(r.doc.model)[0]
    with pytest.raises(InputError) as err:
        quantize_retriever(r, mixed, CALIBRATION)
    assert str(err.value) == (
        f"quant pattern '*.attention.self.*' matches no nn.Linear module of this {arch} model "
        f"(modules look like {first!r})"
    )
    assert not any(isinstance(m, QuantLinear) for m in r.doc.model.modules())


def test_bnb_4bit_rows_that_are_not_whole_blocks_are_refused_on_cpu(tmp_path, caplog):
    """bitsandbytes' CPU 4-bit kernels decode wrong weights when a row is not a multiple of the block size:
    rows wider than a block are an error before any layer is replaced, shorter ones (toy models) a warning."""
    path = build_tiny_encoder(tmp_path / "bert48", "bert", VOCAB, hidden=48, layers=1)  # rows of 48 and 96
    r = load(path)
    with pytest.raises(InputError) as err:
        quantize_retriever(r, QuantConfig(name="bnb_nf4", bits=4, blocksize=64))
    assert str(err.value) == (
        "quant.blocksize=64: bitsandbytes' CPU 4-bit kernels decode wrong weights when a row "
        "(encoder.layer.0.attention.self.query of this bert model: 48, and 5 more) is not a multiple of the block "
        "size (64); no bitsandbytes block size divides them all, or run on CUDA"
    )
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in r.doc.model.modules())
    info = quantize_retriever(r, QuantConfig(name="bnb_nf4", bits=4, blocksize=128))  # every row shorter: warned
    assert "quant.blocksize=128: bitsandbytes' CPU 4-bit kernels decode wrong weights" in caplog.text
    assert len(info["layers"]) == 6


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gptq_replays_each_block_with_its_own_masks_and_position_embeddings(models, arch):
    """GPTQ runs block k on block k-1's output with block k's own extra arguments (ModernBERT alternates
    global and sliding-window layers, each with its own mask and rotary embeddings): chained through every
    block, the replay reproduces the model's own last block output."""
    r = load(models[arch])
    model = r.doc.model
    blocks, _ = gptq._blocks(model, expected_linears(model))
    assert len(blocks) == LAYERS
    batches = gptq._batches(r.doc.tokenizer, NOTES[:20], 32, torch.device("cpu"))
    # one Hessian per shared input: query/key/value (DistilBERT's q_lin/k_lin/v_lin, MPNet's q/k/v) together;
    # ModernBERT's fused Wqkv is one layer; ELECTRA's embeddings_project comes first, outside the blocks
    per_block = [1, 1, 1, 1] if arch == "modernbert" else [3, 1, 1, 1]
    stages = gptq._stages(model, expected_linears(model), batches[0])
    assert [len(x) for x in stages] == [1] * (arch == "electra") + per_block * LAYERS
    mods = [model.get_submodule(b) for b in blocks]
    calls = gptq._block_inputs(model, mods, batches)
    inputs = calls[0]
    for k in range(1, len(mods)):
        inputs = gptq._replay(mods[k - 1], inputs, calls[k])
    seen = []  # the last block's output in the model's own forward
    hook = mods[-1].register_forward_hook(lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        for b in batches:
            model(**b)
        hook.remove()
        assert len(seen) == len(inputs) == len(batches)
        for expected, (args, kwargs) in zip(seen, inputs):
            out = mods[-1](*args, **kwargs)
            torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_load_of_the_packed_model_gives_the_same_embeddings(models, arch, tmp_path):
    cfg = QuantConfig(name="nf", bits=3, **G, method="gptq", act_order=True, refine_steps=2, embeddings=True, **CAL)
    r = load(models[arch])
    info = quantize_retriever(r, cfg, CALIBRATION)
    before = r.doc.encode(PROBE, 4)
    save_quantized(r, tmp_path / "packed", info)
    loaded = load(tmp_path / "packed")
    packed = [n for n, m in loaded.doc.model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))]
    assert len(packed) == LINEARS[arch] + 1  # every linear and the word-embedding table, still packed
    again = quantize_retriever(loaded, QuantConfig(name="none"))
    assert again["loaded_packed"] and again["effective_bits_per_param"] == pytest.approx(
        info["effective_bits_per_param"]
    )
    np.testing.assert_allclose(loaded.doc.encode(PROBE, 4), before, atol=1e-6)
    decode_resident(loaded, cfg)
    np.testing.assert_allclose(loaded.doc.encode(PROBE, 4), before, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sensitivity_scan_and_auto_choice(models, arch, tmp_path):
    scan_cfg = compose_scan(
        f"model.path={models[arch]}",
        "model.name=tiny",
        "model.max_length=32",
        "logger=none",
        "quant.group_size=16",
        "data.num_records=80",
        "data.num_queries=20",
        "scan.dev_queries=6",
        "scan.dev_corpus=30",
        "scan.fidelity_texts=6",
        "scan.bits=[2,8]",
    )
    report = run_sensitivity(scan_cfg, tmp_path / "scan")
    r = load(models[arch])
    linears = expected_linears(r.doc.model)
    assert [x["name"] for x in report["layers"]] == linears
    for layer in report["layers"]:
        lo, hi = layer["curve"]["2"], layer["curve"]["8"]
        assert lo["weight_mse"] > hi["weight_mse"] and np.isfinite([lo["fidelity_drop"], lo["ndcg_drop"]]).all()
    n = sum(x["params"] for x in report["layers"])
    cheapest = sum(x["curve"]["2"]["effective_bits"] * x["params"] for x in report["layers"]) / n
    target = 1.5 * cheapest  # between all-2 and all-8 bits: a real mix
    auto = QuantConfig(name="auto", target_bits=target, sensitivity=str(tmp_path / "scan" / "sensitivity.json"))
    concrete, chosen = resolve_auto(auto, str(models[arch]), None, tmp_path / "run", lambda: str(models[arch]))
    info = quantize_retriever(r, concrete, CALIBRATION)
    assert {x["name"]: x["bits"] for x in info["layers"]} == chosen["bits_per_layer"]
    assert set(chosen["bits_per_layer"].values()) == {2, 8}
    assert info["effective_bits_per_param"] == pytest.approx(chosen["predicted_bits_per_param"], rel=1e-12)
    assert info["effective_bits_per_param"] <= target


GPTQ_REFINE = QuantConfig(name="nf", bits=4, **G, method="gptq", refine_steps=2, **CAL)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_run_that_cannot_fit_in_memory_says_so_before_it_starts(models, arch, monkeypatch):
    r = load(models[arch])
    model = r.doc.model
    weights = {n: p.detach().clone() for n, p in model.state_dict().items()}
    specs = {n: GPTQ_REFINE for n in expected_linears(model)}
    est = memory.estimate(model, r.doc.tokenizer, specs, GPTQ_REFINE, CALIBRATION, 32)
    (need,) = est.need.values()
    (grows,) = est.grows.values()
    assert 0 < grows < need  # targets and block inputs grow with the texts; the Hessians and codes do not
    free = need - grows / 2  # room for about half the texts
    monkeypatch.setenv(memory.ENV, str(int(free)))
    with pytest.raises(InputError) as err:
        quantize_retriever(r, GPTQ_REFINE, CALIBRATION)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"quant.method=gptq and quant.refine_steps=2 on {arch}: needs about")
    assert f"is available (set by {memory.ENV})" in msg and "lower quant.calibration_texts (12 now, about" in msg
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # refused before anything was rounded
    assert all(torch.equal(p, weights[n]) for n, p in model.state_dict().items())
    fit = int(msg.split("about ")[-1].split(" would fit")[0])
    assert 1 <= fit < 12
    info = quantize_retriever(r, replace(GPTQ_REFINE, calibration_texts=max(fit, 2)), CALIBRATION)
    assert info["calibration_texts_used"] == max(fit, 2)
    # the parts that do not shrink with fewer texts over the figure: the line says what else to lower
    monkeypatch.setenv(memory.ENV, "1K")
    with pytest.raises(
        InputError, match="fewer calibration texts would not be enough: lower model.max_length, or use quant.method=rtn"
    ):
        quantize_retriever(load(models[arch]), GPTQ_REFINE, CALIBRATION)


def test_available_memory_is_the_hosts_unless_the_env_variable_sets_it(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    free = memory.available(torch.device("cpu"))["host"]
    assert 0 < free <= psutil.virtual_memory().total
    for raw, figure in (("1.5G", int(1.5 * 2**30)), ("512MiB", 512 * 2**20), ("4096", 4096)):
        monkeypatch.setenv(memory.ENV, raw)
        assert memory.available(torch.device("cpu")) == {"host": figure}
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(InputError, match=r"^MEDRET_AVAILABLE_MEMORY='lots': expected a number of bytes"):
        memory.available(torch.device("cpu"))


def test_gptq_and_refinement_show_progress(models, capsys):
    r = load(models["bert"])
    quantize_retriever(r, GPTQ_REFINE, CALIBRATION)
    err = capsys.readouterr().err
    assert f"gptq:   0%|          | 0/{LINEARS['bert']} [" in err  # a bar over the layers, with an ETA
    assert "refine:   0%|          | 0/2 [" in err and "loss=" in err  # over the steps, with the loss


def test_end_to_end_modernbert_gptq_refine_embeddings_saved_and_reloaded(models, tmp_path):
    """Two evaluate runs on ModernBERT: GPTQ act-order + refinement + embeddings, saved; then the saved folder
    evaluated as model.path gives the same metrics without re-quantizing."""
    base = [
        "model.name=tiny",
        "model.max_length=32",
        "logger=none",
        "data.num_records=60",
        "data.num_queries=12",
        "eval.k_values=[1,10]",
    ]
    saved = tmp_path / "saved"
    quant = ["quant=nf", "quant.bits=4", "quant.group_size=16", "quant.method=gptq", "quant.act_order=true"]
    res = run_evaluate(
        compose_cfg(
            *base,
            f"model.path={models['modernbert']}",
            *quant,
            "quant.refine_steps=2",
            "quant.embeddings=true",
            f"quant.save_dir={saved}",
        ),
        tmp_path / "q",
    )
    q = res["quant"]
    assert len(q["layers"]) == LINEARS["modernbert"] + 1 and q["refine"][0]["steps"] == 2
    again = run_evaluate(compose_cfg(*base, f"model.path={saved}"), tmp_path / "loaded")
    assert again["quant"]["loaded_packed"] and again["metrics"] == res["metrics"]
