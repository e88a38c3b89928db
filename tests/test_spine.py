"""The spine's shape: one scheme registry, one direction between packages, short stages, and the bugs
fixed while splitting it (mining reuses evaluate's shards, the index as built, calibration checks)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from medret.config import ModelConfig, QuantConfig
from medret.evaluation import run_evaluate
from medret.launch.task import objective
from medret.models import load_retriever
from medret.quant import names, needs_calibration, quantize_retriever, scheme
from medret.quant.registry import Scheme, register
from medret.quant.state import make_state
from medret.training import run_train
from tests.test_evaluate import ROOT, compose_cfg, tiny_overrides
from tests.test_train import train_cfg

MEDRET = ROOT / "medret"


def test_every_quant_yaml_names_a_registered_scheme_and_every_scheme_has_a_yaml():
    yamls = {yaml.safe_load(p.read_text())["name"] for p in (ROOT / "conf" / "quant").glob("*.yaml")}
    assert set(names()) <= yamls | {"none"}, set(names()) - yamls
    assert yamls <= set(names()), yamls - set(names())


def test_a_scheme_registered_in_one_place_quantizes_end_to_end(tiny_bert):
    """What a new scheme file does: register a pure quantize function; validate, QAT and evaluate find it."""

    def sign_quantize(w, spec, group_size, importance):  # 1-level-per-sign codebook scaled by mean |w|
        g = w.reshape(-1, group_size)
        scale = g.abs().mean(dim=1)
        return make_state(w, spec.bits, group_size, (g >= 0).to(torch.uint8), torch.tensor([[-1.0, 1.0]]), scale)

    register(Scheme("test_sign", "custom", sign_quantize))
    try:
        assert "test_sign" in names("custom")
        r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
        info = quantize_retriever(r, QuantConfig(name="test_sign", bits=1 + 1, group_size=16))
        assert info["scheme"] == "test_sign" and info["quantized_params"] > 0
        assert info["model_bytes"] < info["fp32_model_bytes"]
    finally:
        from medret.quant import registry

        registry._SCHEMES.pop("test_sign")


def test_needs_calibration_takes_a_dataclass_a_dictconfig_and_overrides():
    assert needs_calibration(QuantConfig(name="fisher_kmeans", bits=3))
    assert not needs_calibration(QuantConfig(name="nf", bits=3))
    assert needs_calibration(OmegaConf.structured(QuantConfig(name="outliers", base="fisher_kmeans", bits=3)))
    assert needs_calibration(QuantConfig(name="nf", bits=3, overrides={"*.query": {"name": "fisher_kmeans"}}))


def test_bnb_4bit_records_the_compute_dtype_asked_and_the_one_that_ran(tiny_bert):
    r = load_retriever(ModelConfig(name="t", path=str(tiny_bert)))
    info = quantize_retriever(r, QuantConfig(name="bnb_nf4", compute_dtype="float32"))
    assert info["bnb_4bit_compute_dtype_requested"] == "float32"
    assert info["bnb_4bit_compute_dtype_ran"] in ("float32", "bfloat16")
    assert scheme("bnb_nf4").bits == 4 and scheme("bnb_int8").bits == 8


def test_results_name_the_index_as_built_with_its_opq_rotation(tiny_bert, tmp_path):
    cfg = compose_cfg(
        *tiny_overrides(tiny_bert, "logger=none", "index=ivf_pq", "index.opq=true", "index.nlist=4", "index.m=8"),
        "index.nbits=4",
    )
    res = run_evaluate(cfg, tmp_path)
    assert res["index"]["factory"] == "OPQ8,IVF4,PQ8x4"
    assert json.loads((tmp_path / "results.json").read_text())["index"]["factory"] == "OPQ8,IVF4,PQ8x4"


def _doc_stores(cache: Path) -> set[str]:
    stores = set()
    for manifest in (cache / "embeddings").glob("*/manifest.json"):
        if json.loads(manifest.read_text())["meta"].get("side") == "doc":
            stores.add(manifest.parent.name)
    return stores


def test_hard_negative_mining_reuses_the_fp32_corpus_shards_evaluate_wrote(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    common = ("data.num_records=300", "data.num_queries=60", "data.split=train", f"cache.dir={cache}")
    run_evaluate(
        compose_cfg(*tiny_overrides(tiny_bert, "logger=none", "eval.k_values=[1,10,100]"), *common), tmp_path / "e"
    )
    before = _doc_stores(cache)
    assert len(before) == 1
    res = run_train(train_cfg(tiny_bert, "train.max_steps=1", "train.hard_negatives=2", *common), tmp_path / "t")
    assert res["steps"] == 1 and res["hard_negatives"] == 2
    assert _doc_stores(cache) == before  # the corpus was not encoded a second time


def test_objective_follows_eval_optimize_metric():
    assert objective({"metrics": {"ndcg@10": 0.5, "recall@100": 0.9}}, "recall@100") == 0.9
    assert objective({"best_dev_ndcg@10": 0.4}, "ndcg@10") == 0.4
    assert objective({"shard": {}}, "ndcg@10") == 0.0
    with pytest.raises(Exception, match="eval.optimize_metric"):
        run_evaluate(compose_cfg("eval.optimize_metric=ndcg@7"), Path("/nonexistent"))


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_the_package_or_entry_scripts_is_longer_than_80_lines():
    files = [*MEDRET.rglob("*.py"), ROOT / "evaluate.py", ROOT / "train.py"]
    long = [f"{p.relative_to(ROOT)}:{f.name} ({f.end_lineno - f.lineno + 1})" for p in files for f in _functions(p)]
    long = [x for x in long if int(x.rsplit("(", 1)[1][:-1]) > 80]
    assert not long, long


def _imports(pkg: str) -> set[str]:
    out = set()
    for p in (MEDRET / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medret."):
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("medret."))
    return out


def test_dependencies_run_one_way():
    assert not {m for m in _imports("quant") if m.startswith("medret.models")}, "quant must not import models"
    assert not {m for m in _imports("training") if m.startswith("medret.evaluation")}, "training uses retrieval only"
    assert not {m for m in _imports("data") if m.startswith("medret.cache")}
    assert not {m for m in _imports("retrieval") if m.startswith(("medret.evaluation", "medret.training"))}
