"""quant.side: only the query or only the document encoder quantized; the other side's embeddings are the fp32
baseline's, bit for bit (read from its cache, or encoded by the untouched fp32 weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medret.cache import cache_key
from medret.config import QuantConfig
from medret.errors import InputError
from medret.evaluation import run_evaluate
from medret.evaluation.sides import check_side, run_key
from medret.quant import plan_quant
from medret.report.collect import row_of
from medret.results import RunResult
from tests.conftest import TINY_VOCAB
from tests.test_evaluate import compose_cfg
from tests.tiny_models import ARCHITECTURES, build_tiny_encoder

VOCAB = TINY_VOCAB
QUANT = ("quant=uniform", "quant.bits=3", "quant.group_size=16")


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """A MedCPT-style pair of two architectures over one vocabulary: BERT documents, ELECTRA queries (its
    embeddings_project Linear is quantized too)."""
    root = tmp_path_factory.mktemp("pair")
    return build_tiny_encoder(root / "doc", "bert", VOCAB, seed=0), build_tiny_encoder(
        root / "query", "electra", VOCAB, seed=1
    )


def run(tmp: Path, name: str, cache: Path, doc: Path, *extra: str, query: Path | None = None) -> dict:
    overrides = [
        "model=minilm",
        f"model.path={doc}",
        *([f"model.query_path={query}"] if query else []),
        "model.name=tiny",
        "data.num_records=80",
        "data.num_queries=20",
        "eval.k_values=[1,5,10]",
        "eval.bootstrap_resamples=200",
        "logger=none",
        f"cache.dir={cache}",
        *extra,
    ]
    return run_evaluate(compose_cfg(*overrides), tmp / name)


def stores(cache: Path) -> dict[str, dict]:
    """Embedding store folder name -> the meta its manifest was written for."""
    return {p.parent.name: json.loads(p.read_text())["meta"] for p in (cache / "embeddings").glob("*/manifest.json")}


def store_of(cache: Path, side: str, quantized: str | None) -> tuple[str, np.ndarray]:
    """(folder name, vectors) of the one store of ``side`` whose quant names side ``quantized`` (None: fp32)."""
    hits = [
        k
        for k, m in stores(cache).items()
        if m["side"] == side and m["quant"].get("side") == quantized and (quantized or m["quant"] == {"name": "none"})
    ]
    assert len(hits) == 1, stores(cache)
    shards = sorted((cache / "embeddings" / hits[0]).glob("shard-*.emb.npy"))
    return hits[0], np.concatenate([np.load(p) for p in shards])


def baseline(res: dict) -> dict:
    z = np.load(res["baseline_cache"])
    return {"query": z["query_emb"], "doc": z["doc_sample"]}


def test_pair_quantizes_one_side_and_reuses_the_fp32_side(pair, tmp_path):
    doc, query = pair
    cache = tmp_path / "cache"
    fp32 = run(tmp_path, "fp32", cache, doc, query=query)
    base = baseline(fp32)
    fp32_keys = {s: store_of(cache, s, None)[0] for s in ("query", "doc")}

    q = run(tmp_path, "query", cache, doc, *QUANT, "quant.side=query", query=query)
    # the document side is the fp32 baseline's cached embeddings: nothing encoded, the same store
    assert q["throughput"]["shards_encoded"] == 0 and q["throughput"]["shards_cached"] == 1
    assert q["cache"]["corpus_dir"] == fp32["cache"]["corpus_dir"]
    q_key, q_emb = store_of(cache, "query", "query")
    assert q_key != fp32_keys["query"] and not np.array_equal(q_emb, base["query"])
    assert q["quant"]["side"] == "query" and q["config"]["quant"]["side"] == "query"
    assert {layer["name"] for layer in q["quant"]["layers"]} >= {"embeddings_project"}  # ELECTRA's, quantized
    assert 0 < q["fidelity"]["embedding_cosine"]["min"] < 1

    # sizes as deployed: the quantized query encoder plus the fp32 document encoder
    sizes, fp32_bytes = q["quant"]["bytes_by_side"], fp32["sizes"]["model_param_bytes"]
    assert (
        q["sizes"]["fp32_model_param_bytes"] == fp32_bytes and q["quant"]["params_all"] == fp32["quant"]["params_all"]
    )
    assert q["sizes"]["model_param_bytes"] == sizes["query"] + sizes["doc"] < fp32_bytes
    bits = q["quant"]["effective_bits_per_param_all"]
    assert bits == pytest.approx(8 * q["sizes"]["model_param_bytes"] / q["quant"]["params_all"]) and 3 < bits < 32

    # side=doc with no embeddings cached: the fp32 query side is encoded again, bit-identical to the baseline's
    shutil.rmtree(cache / "embeddings")
    d = run(tmp_path, "doc", cache, doc, *QUANT, "quant.side=doc", query=query)
    assert d["throughput"]["queries_cached"] is False and d["quant"]["side"] == "doc"
    key, emb = store_of(cache, "query", None)
    assert key == fp32_keys["query"] and np.array_equal(emb, base["query"])
    key, emb = store_of(cache, "doc", "doc")
    assert key != fp32_keys["doc"] and not np.array_equal(emb, base["doc"])
    assert key != q_key  # each side keyed apart
    assert sizes["doc"] + d["quant"]["bytes_by_side"]["query"] == fp32_bytes  # each fp32 side as the fp32 run has it

    assert row_of(RunResult.of(q), "q")["scheme"] == "uniform (query only)"
    assert row_of(RunResult.of(fp32), "fp32")["scheme"] == "none"


def test_symmetric_model_quantizes_a_copy_for_one_side(tiny_bert, tmp_path):
    cache = tmp_path / "cache"
    fp32 = run(tmp_path, "fp32", cache, tiny_bert)
    base = baseline(fp32)
    shutil.rmtree(cache / "embeddings")  # the fp32 side must be encoded by the weights it kept

    q = run(tmp_path, "query", cache, tiny_bert, *QUANT, "quant.side=query")
    _, doc_emb = store_of(cache, "doc", None)
    assert np.array_equal(doc_emb, base["doc"])
    _, q_emb = store_of(cache, "query", "query")
    assert not np.array_equal(q_emb, base["query"])
    # two models deployed: the fp32 one (what the fp32 run deploys) and the quantized copy
    sizes = q["quant"]["bytes_by_side"]
    assert sizes["doc"] == fp32["sizes"]["model_param_bytes"] == q["sizes"]["fp32_model_param_bytes"]
    assert q["sizes"]["model_param_bytes"] == sizes["doc"] + sizes["query"] and sizes["query"] < sizes["doc"]
    assert q["quant"]["params_all"] == 2 * fp32["quant"]["params_all"]


def test_side_checks_before_any_model_and_both_keeps_old_keys(tmp_path):
    with pytest.raises(InputError, match=r"^quant.side='left': expected one of both, query, doc"):
        run_evaluate(
            compose_cfg("quant=uniform", "quant.bits=3", "quant.side=left", "model.path=/no/such/model", "logger=none"),
            tmp_path,
        )
    with pytest.raises(InputError, match="quant.side=doc: model.adapter"):
        check_side(QuantConfig(name="nf", bits=3, side="doc"), "/some/adapter")
    with pytest.raises(InputError, match="quant.side=query: quant.save_dir"):
        check_side(QuantConfig(name="nf", bits=3, side="query", save_dir="/x"), None)
    unused = QuantConfig(name="none", side="query")
    check_side(unused, None)
    assert unused.side == "both"  # nothing quantized: recorded as both

    w = {"doc": "d" * 64, "query": "q" * 64}
    both = plan_quant(QuantConfig(name="uniform", bits=3)).cache_key
    old = {k: v for k, v in both.items() if k != "side"}  # the quant identity as it was before quant.side
    assert run_key(w, both, "both") == {"weights": w, "quant": old}
    one = run_key(w, plan_quant(QuantConfig(name="uniform", bits=3, side="query")).cache_key, "query")
    assert one == {"weights": w, "quant": {**old, "side": "query"}, "fp32_side": "doc"}
    fp32 = {"weights": w, "quant": {"name": "none"}}
    assert cache_key({**one, "side": "doc"}) == cache_key({**fp32, "side": "doc"})  # the fp32 side: fp32's key
    assert cache_key({**one, "side": "query"}) != cache_key({**run_key(w, both, "both"), "side": "query"})
    # a quant identity naming a side without the split's fp32_side (another entry point) is never keyed as fp32
    assert cache_key({"weights": w, "quant": one["quant"], "side": "doc"}) != cache_key({**fp32, "side": "doc"})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_quantizes_its_doc_side_alone(arch, tmp_path):
    """A symmetric model of each architecture, document side quantized: the query side is fp32's, bit for bit."""
    model = build_tiny_encoder(tmp_path / arch, arch, VOCAB, seed=2)
    cache = tmp_path / "cache"
    base = baseline(run(tmp_path, "fp32", cache, model))
    shutil.rmtree(cache / "embeddings")
    d = run(tmp_path, "doc", cache, model, *QUANT, "quant.side=doc")
    assert np.array_equal(store_of(cache, "query", None)[1], base["query"])
    assert not np.array_equal(store_of(cache, "doc", "doc")[1], base["doc"])
    assert d["quant"]["bytes_by_side"]["doc"] < d["quant"]["bytes_by_side"]["query"]
