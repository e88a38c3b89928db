"""The word-embedding table in frequency tiers (quant.embedding_bits / quant.embedding_tiers), its scan
(scan.embeddings=true), quant=auto with the budget over the whole model (quant.budget_over=model), and a scan
whose points GPTQ rounds (quant.method=gptq). Tiny random BERT, a few synthetic texts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from medret.config import DataConfig, ModelConfig, QuantConfig
from medret.data import load_dataset
from medret.errors import InputError
from medret.models import load_retriever
from medret.quant import calibration_corpus, model_sizes
from medret.quant.apply import quantize_model
from medret.quant.auto import resolve_auto
from medret.quant.embedding import TieredEmbedding
from medret.quant.embedding_tiers import (
    assign_tiers,
    check_embedding_options,
    quantize_rows,
    quantize_table,
    tiered_table,
    token_counts,
)
from medret.quant.gptq import gptq_quantize
from medret.quant.sizes import bytes_by_part, param_count
from medret.quant.state import dequantize
from medret.sensitivity import run_sensitivity
from medret.sensitivity.rounding import hessians
from medret.sensitivity.table import only_tier, tables
from tests.test_sensitivity import GROUP, SCAN, TINY, compose_scan

TEXTS = [
    "patient denies chest pain",
    "the patient has diabetes and the patient is treated",
    "no known allergies; the plan: metformin",
] * 4
SPEC = QuantConfig(
    name="nf", bits=4, group_size=16, embeddings=True, embedding_bits=[4, 3, 2], embedding_tiers=[0.1, 0.3]
)
TIERS = [0.1, 0.3]


def _retriever(tiny_bert):
    return load_retriever(ModelConfig(name="tiny", path=str(tiny_bert), max_length=64))


def test_frequent_rows_get_more_bits_and_every_lookup_decodes_exactly(tiny_bert):
    e = _retriever(tiny_bert).doc
    w = e.model.get_input_embeddings().weight.detach().float()
    counts = token_counts(e.tokenizer, TEXTS, w.shape[0], 64)
    tier = assign_tiers(counts, TIERS)
    cls, unseen = e.tokenizer.cls_token_id, e.tokenizer.convert_tokens_to_ids("woman")
    assert counts[cls] == len(TEXTS) and counts[unseen] == 0
    assert tier[cls] == 0 and tier[unseen] == 2  # the commonest row is in the top tier, a row never seen last
    assert (tier[counts == 0] == 2).all()  # every row never seen is in the last tier
    assert int((tier == 0).sum()) <= round(0.1 * len(w))  # a tier never holds more than its share
    table = tiered_table(w, tier, SPEC, 16)
    assert table.tiers[tier[cls]]["bits"] == 4 and table.tiers[tier[unseen]]["bits"] == 2
    ids = torch.tensor([[cls, unseen, 7, cls], [0, 3, unseen, 40]])
    dense = table.dense().weight
    assert torch.equal(table(ids), dense[ids])  # a lookup decodes only its rows, exactly as the whole table
    # row-wise groups: each row decodes as that row alone at its tier's width, so the frequent one is closer
    for row, bits in ((cls, 4), (unseen, 2)):
        alone = dequantize(quantize_rows(w[row][None], SPEC, bits, 16))[0]
        assert torch.equal(dense[row], alone)
    err = lambda row, bits: (dequantize(quantize_rows(w[row][None], SPEC, bits, 16))[0] - w[row]).pow(2).sum()  # noqa: E731
    assert err(cls, 4) < err(cls, 2)
    # the scales refitted: no group is further from fp32 than the scheme's own absmax fit
    from medret.quant.layers import quantize_weight

    plain = dequantize(quantize_weight(w, replace(SPEC, bits=2), 16))
    refit = dequantize(quantize_rows(w, SPEC, 2, 16))
    per_group = lambda d: (d - w).pow(2).view(-1, 16).sum(1)  # noqa: E731
    assert (per_group(refit) <= per_group(plain) + 1e-7).all() and per_group(refit).sum() < per_group(plain).sum()


def test_packed_bytes_equal_the_priced_bytes_and_survive_save_load(tiny_bert, tmp_path):
    r = _retriever(tiny_bert)
    e = r.doc
    n_params = param_count(e.model)
    w = e.model.get_input_embeddings().weight.detach().float().clone()
    [tab] = tables([e], TIERS, TEXTS)  # how the scan prices each tier at each width
    priced = 0.0
    for i, bits in enumerate(SPEC.embedding_bits):
        with only_tier([tab], i, SPEC, bits) as stats:
            priced += stats["effective_bits"] * int((tab.tier == i).sum()) * w.shape[1]
    priced += 2 * ((w.shape[0] + 7) // 8) * 8  # the row -> tier map: 2 bits a row for 3 tiers
    report = quantize_table(e.model, e.tokenizer, SPEC, torch.device("cpu"), TEXTS, 64)
    table = e.model.get_input_embeddings()
    assert isinstance(table, TieredEmbedding) and report["index_bits"] == 2
    assert bytes_by_part(e.model)["embeddings"] * 8 == pytest.approx(priced, rel=1e-12) == table.storage_bits()
    assert report["effective_bits"] * report["params"] == pytest.approx(priced, rel=1e-12)
    assert param_count(e.model) == n_params  # still counted as the fp32 table's parameters
    assert [t["rows"] for t in report["tiers"]] == [int((tab.tier == i).sum()) for i in range(3)]
    assert report["tiers"][0]["occurrence_share"] > report["tiers"][2]["occurrence_share"]
    before = r.doc.encode(TEXTS[:3], 4)

    # save -> load: the manifest entry rebuilds empty buffers, the tensors load strictly, lookups are identical
    save_file(table.state_dict(), str(tmp_path / "table.safetensors"))
    entry = json.loads(json.dumps(table.manifest_entry()))
    again = TieredEmbedding.from_manifest(entry)
    again.load_state_dict(load_file(str(tmp_path / "table.safetensors")), strict=True)
    ids = torch.arange(w.shape[0])
    assert torch.equal(again(ids), table(ids)) and torch.equal(again.dense().weight, table.dense().weight)
    assert again.storage_bits() == table.storage_bits()
    e.model.set_submodule(report["name"], again, strict=True)
    assert (r.doc.encode(TEXTS[:3], 4) == before).all()


def test_bad_tier_options_are_one_error_line():
    base = QuantConfig(name="nf", bits=4, group_size=16, embeddings=True)
    cases = {
        "quant.embedding_bits=[4, 2]: sets the word-embedding table's widths; needs quant.embeddings=true": replace(
            base, embeddings=False, embedding_bits=[4, 2], embedding_tiers=[0.1]
        ),
        "quant.embedding_tiers=[0.1]: needs quant.embedding_bits": replace(base, embedding_tiers=[0.1]),
        "quant.embedding_tiers=None: expected 1 increasing share(s)": replace(base, embedding_bits=[4, 2]),
        "quant.embedding_tiers=[0.3, 0.1]: expected 2 increasing": replace(
            base, embedding_bits=[4, 3, 2], embedding_tiers=[0.3, 0.1]
        ),
        "quant.embedding_tiers=[1.5]: expected 1": replace(base, embedding_bits=[4, 2], embedding_tiers=[1.5]),
        "quant.embedding_bits=[1]: expected a list of integer widths in 2..8": replace(base, embedding_bits=[1]),
        "frequency tiers store a custom scheme's rows, not quant=bnb_nf4": replace(
            base, name="bnb_nf4", bits=None, embedding_bits=[4]
        ),
        "tiers need groups within a row": replace(base, granularity="tensor", embedding_bits=[4]),
    }
    for expected, cfg in cases.items():
        with pytest.raises(InputError) as err:
            check_embedding_options(cfg)
        assert expected in str(err.value) and "\n" not in str(err.value)
    check_embedding_options(replace(base, embedding_bits=[2]))  # one width for every row: no tiers needed


@pytest.fixture(scope="module")
def table_scan(tiny_bert, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("table_scan")
    cfg = compose_scan(
        f"model.path={tiny_bert}",
        *TINY,
        GROUP,
        *SCAN,
        "quant=nf",
        "scan.fidelity_texts=8",
        "scan.bits=[2,4]",
        "scan.embeddings=true",
        "scan.embedding_tiers=[0.1,0.3]",
    )
    return run_dir, run_sensitivity(cfg, run_dir)


def test_auto_over_the_whole_model_meets_its_budget_in_bytes(table_scan, tiny_bert, tmp_path):
    scan_dir, report = table_scan
    emb, size = report["embedding"], report["model_size"]
    assert [g["tier"] for g in emb["groups"]] == [0, 1, 2] and emb["index_bits"] == 2
    assert sum(g["rows"] for g in emb["groups"]) == emb["rows"] and emb["seen_rows"] < emb["rows"]
    for g in emb["groups"]:  # each tier alone: 2 bits err more than 4, and cost less
        lo, hi = g["curve"]["2"], g["curve"]["4"]
        assert lo["weight_mse"] > hi["weight_mse"] and lo["effective_bits"] < hi["effective_bits"]
    # the budget over every parameter, between the cheapest and the dearest choice
    items = [*report["layers"], *emb["groups"]]
    cheapest = sum(min(c["effective_bits"] for c in x["curve"].values()) * x["params"] for x in items)
    low = (cheapest + 8 * (size["fixed_bytes"] + emb["index_bytes"])) / size["params_all"]
    target = low + 0.4
    auto = QuantConfig(
        name="auto", target_bits=target, sensitivity=str(scan_dir / "sensitivity.json"), budget_over="model"
    )
    concrete, info = resolve_auto(auto, str(tiny_bert), None, tmp_path, lambda: str(tiny_bert))
    assert info["budget_over"] == "model" and info["predicted_bits_per_param"] <= target
    assert concrete.embeddings and concrete.embedding_bits == info["embedding_bits"]
    assert concrete.embedding_tiers == TIERS and len(concrete.embedding_bits) == 3
    assert info["embedding_bits"][0] >= info["embedding_bits"][-1]  # the frequent tier never below the unseen one
    choice = (tmp_path / "quant" / "auto_choice.yaml").read_text()
    assert "every parameter of the model" in choice and "embedding_bits" in choice
    check_embedding_options(concrete)

    # what the run stores: the linears by quantize_model, the table by its tiers (calibration texts as evaluate)
    r = _retriever(tiny_bert)
    e = r.doc
    n_params = param_count(e.model)
    data = load_dataset(DataConfig(**{**report["config"]["data"]}))
    texts = calibration_corpus(data.doc_texts, concrete)
    linears = replace(concrete, embeddings=False, embedding_bits=None, embedding_tiers=None)
    quantize_model(e.model, e.tokenizer, linears, texts, e.settings.pooling, e.settings.max_length)
    quantize_table(e.model, e.tokenizer, concrete, torch.device("cpu"), texts, e.settings.max_length)
    sizes = model_sizes([e], n_params)
    assert n_params == size["params_all"]
    assert sizes["effective_bits_per_param_all"] <= target
    assert sizes["effective_bits_per_param_all"] == pytest.approx(info["predicted_bits_per_param"], rel=1e-12)
    assert sizes["model_bytes"] == info["predicted_model_bytes"]

    # a linears-only budget on the same scan is today's choice: no table in it
    lin, lin_info = resolve_auto(
        replace(auto, budget_over="linears", target_bits=3.5), str(tiny_bert), None, None, lambda: str(tiny_bert)
    )
    assert not lin.embeddings and "embedding_bits" not in lin_info
    # ... and with the table set by the run (outside the linears' budget), the run's tiers are kept as set
    own = dict(embeddings=True, embedding_bits=[4, 2], embedding_tiers=[0.2])
    mine, mine_info = resolve_auto(
        replace(auto, budget_over="linears", target_bits=3.5, **own), str(tiny_bert), None, None, lambda: str(tiny_bert)
    )
    assert mine_info["bits_per_layer"] == lin_info["bits_per_layer"]  # the linears' choice does not change
    assert (mine.embeddings, mine.embedding_bits, mine.embedding_tiers) == (True, [4, 2], [0.2])
    assert mine.overrides == lin.overrides and mine.bits == lin.bits


def test_bad_budget_and_scan_options_are_one_error_line(table_scan, tiny_bert, tmp_path):
    scan_dir, report = table_scan
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: v for k, v in report.items() if k != "embedding"}))
    auto = QuantConfig(name="auto", target_bits=3.0, sensitivity=str(scan_dir / "sensitivity.json"))
    cases = {
        "quant.budget_over='all': expected linears or model": replace(auto, budget_over="all"),
        "quant.budget_over=model: ": replace(auto, budget_over="model", sensitivity=str(plain)),
        "effective bits/param over every parameter of the model": replace(auto, budget_over="model", target_bits=1.0),
        # the budget over the whole model prices the table: a table set by the run would be silently replaced
        "quant.embeddings=True: quant=auto takes the scheme and its options from the scan": replace(
            auto, budget_over="model", embeddings=True
        ),
    }
    for expected, cfg in cases.items():
        with pytest.raises(InputError) as err:
            resolve_auto(cfg, str(tiny_bert), None, None, lambda: str(tiny_bert))
        assert expected in str(err.value) and "\n" not in str(err.value)
    base = [f"model.path={tiny_bert}", *TINY, GROUP, *SCAN]
    for extra, expected in (
        (["scan.embeddings=true", "scan.embedding_tiers=[0.5,0.1]"], "scan.embedding_tiers=[0.5, 0.1]: expected"),
        (["scan.embeddings=true", "quant.granularity=tensor"], "the table's tiers need groups within a row"),
        (["quant.method=hqq", "quant.symmetric=false"], "quant.method=hqq: the scan rounds each point by rtn or gptq"),
    ):
        with pytest.raises(InputError) as err:
            run_sensitivity(compose_scan(*base, *extra), tmp_path / "bad")
        assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_gptq_scan_rounds_each_point_as_the_run_does(tiny_bert, tmp_path):
    layers = "scan.layers=[encoder.layer.0.attention.self.*]"
    common = (f"model.path={tiny_bert}", *TINY, GROUP, *SCAN, "scan.fidelity_texts=8", "scan.bits=[2,3]", layers)
    gptq = run_sensitivity(compose_scan(*common, "quant.method=gptq"), tmp_path / "gptq")
    rtn = run_sensitivity(compose_scan(*common), tmp_path / "rtn")
    cost = gptq["rounding"]
    assert cost["method"] == "gptq" and cost["hessian_seconds"] > 0 and cost["calibration_tokens"] > 0
    assert cost["round_seconds"] > 0 and cost["measure_seconds"] > 0 and rtn["rounding"]["method"] == "rtn"
    # each point is GPTQ over the fp32 inputs of the calibration texts: the same weights recomputed here
    e = _retriever(tiny_bert).doc
    data = load_dataset(DataConfig(**gptq["config"]["data"]))
    texts = calibration_corpus(data.doc_texts, QuantConfig(calibration_texts=8))
    names = [layer["name"] for layer in gptq["layers"]]
    found, _ = hessians(e.model, e.tokenizer, texts, names, 64)
    spec = QuantConfig(name="uniform", bits=2, group_size=16, method="gptq")
    for g, r in zip(gptq["layers"], rtn["layers"]):
        w = e.model.get_submodule(g["name"]).weight.detach().float()
        mse = float((dequantize(gptq_quantize(w, found[g["name"]], spec, 16)) - w).pow(2).mean())
        assert g["curve"]["2"]["weight_mse"] == pytest.approx(mse, rel=1e-5)
        assert g["curve"]["2"]["fidelity_drop"] != r["curve"]["2"]["fidelity_drop"]
    # quant=auto over it says which rounding priced its widths
    _, info = resolve_auto(
        QuantConfig(name="auto", target_bits=3.5, sensitivity=str(tmp_path / "gptq" / "sensitivity.json")),
        str(tiny_bert),
        None,
        None,
        lambda: str(tiny_bert),
    )
    assert info["scan_rounding"] == "gptq"
