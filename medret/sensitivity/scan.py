"""The scan: each quantizable linear alone at each width, measured against fp32 on the dev set; with
``scan.embeddings=true`` each frequency tier of the word-embedding table too (``medret.sensitivity.table``).

Cost: one dev-corpus encode and one fidelity-text encode per (layer, width), both through the shard cache
(a killed scan resumes from its last point). The default dev corpus (``scan.dev_corpus``) keeps that
affordable on a CPU at MiniLM's size; ``scan.ndcg=false`` drops the dev corpus (fidelity alone, quant=auto's
default measure), the affordable scan at BERT-base size.
``quant.method=gptq`` rounds each point by GPTQ (``medret.sensitivity.rounding``): one more forward pass
over the calibration texts for the Hessians, and a GPTQ solve per point (the report's ``rounding`` times them)."""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

import medret
from medret.cache import cache_root, ensure_writable
from medret.cache.options import check_cache_options
from medret.config import QuantConfig, typed
from medret.data import RetrievalDataset, check_data_options, load_dataset
from medret.errors import InputError
from medret.evaluation.fidelity import cosine_rows
from medret.evaluation.pipeline import check_eval_numbers, check_passage_length
from medret.index import check_index_options
from medret.models import load_retriever
from medret.models.encoder import check_model_folders, check_model_options
from medret.quant import calibration_corpus, quant_identity, scheme, validate
from medret.quant.auto import SCAN_FORMAT
from medret.quant.fisher import squared_gradients
from medret.quant.select import group_size_for, select_linears, spec_for
from medret.quant.state import dequantize
from medret.retrieval import RetrievalSettings, model_identity, retrieve, score
from medret.retrieval.encode import encode_corpus
from medret.sensitivity.config import SensitivityRootConfig
from medret.sensitivity.dev import check_dev_options, dev_set, fidelity_set
from medret.sensitivity.report import by_type, correlations, layer_type, table
from medret.sensitivity.rounding import METHODS, hessians, round_layer
from medret.sensitivity.table import (
    Table,
    check_table_options,
    model_size,
    only_tier,
    table_groups,
    table_info,
    tables,
    tier_spec,
)
from medret.storage import write_atomic, write_json
from medret.tracking import check_logger, start_tracker
from medret.tracking.provenance import git_commit, versions

log = logging.getLogger(__name__)

NDCG_K = 10
PROXY = "sum over weights of Fisher (squared gradients of a label-free contrastive loss) x squared quantization error"


def check_scan_options(cfg: SensitivityRootConfig) -> None:
    """Every option that needs no data or model, before anything loads."""
    check_data_options(cfg.data)
    check_model_options(cfg.model)
    check_passage_length(cfg)
    check_index_options(cfg.index)
    check_logger(cfg.logger)
    check_cache_options(cfg)
    check_eval_numbers(cfg.eval)  # eval.passage_fanout is read by retrieval
    check_dev_options(cfg.scan, cfg.data)
    q = cfg.quant
    if scheme(q.name).kind != "custom":
        raise InputError(f"quant={q.name}: the scan quantizes one layer at a time with a custom scheme (e.g. uniform)")
    if q.side != "both":  # the scan's drops are of the whole retriever, both sides quantized
        raise InputError(f"quant.side={q.side}: the scan quantizes both encoders; use quant.side=both")
    if q.overrides or q.embeddings:
        raise InputError(
            "quant.overrides / quant.embeddings: the scan sets each layer's width itself (the table's tiers with "
            "scan.embeddings=true); leave them unset"
        )
    if q.method not in METHODS:
        raise InputError(f"quant.method={q.method}: the scan rounds each point by {' or '.join(METHODS)} (as the run)")
    if getattr(q, "rotate", "none") != "none":
        raise InputError(
            f"quant.rotate={q.rotate}: the scan rounds each layer in its own basis; rotate in the run (quant=auto "
            "passes quant.rotate on to the chosen widths)"
        )
    if cfg.scan.embeddings:
        check_table_options(list(cfg.scan.embedding_tiers), q)
    if cfg.runtime.name != "torch":
        raise InputError(f"runtime={cfg.runtime.name}: the scan runs the torch encoders (runtime=torch)")
    bits = list(cfg.scan.bits)
    if not bits or len(set(bits)) != len(bits) or not all(isinstance(b, int) and 2 <= b <= 8 for b in bits):
        raise InputError(f"scan.bits={bits}: expected distinct integer widths in 2..8 (e.g. [2,3,4,8])")
    for b in bits:
        validate(replace(q, bits=b), cfg.model.device)


def scanned_layers(model, cfg: SensitivityRootConfig) -> list[str]:
    names = select_linears(model, cfg.quant)
    for pattern in cfg.scan.layers:
        if not fnmatch.filter(names, pattern):
            raise InputError(f"scan.layers: {pattern!r} matches no quantized nn.Linear (e.g. {names[0]!r})")
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in cfg.scan.layers)]


@contextmanager
def only_layer(
    encoders: list, name: str, spec: QuantConfig, fisher: list[dict], hess: list[dict]
) -> Iterator[dict[str, float]]:
    """Layer ``name`` of every encoder holds its quantized-then-decoded weight (what evaluate's decode-once
    runs) inside the block; the fp32 weight is back after it. Yields the layer's storage and errors."""
    saved, stats = [], {"effective_bits": 0.0, "proxy": 0.0, "weight_mse": 0.0, "round_seconds": 0.0}
    calibrated = any(scheme(x).calibrated for x in (spec.name, spec.base) if x)  # Fisher weights, not GPTQ's
    try:
        for e, f, h in zip(encoders, fisher, hess):
            lin = e.model.get_submodule(name)
            w = lin.weight.detach().float().cpu()
            t0 = time.perf_counter()
            imp = f[name].cpu() if calibrated else None
            state = round_layer(w, spec, group_size_for(w, spec, name), imp, h.get(name))
            stats["round_seconds"] += time.perf_counter() - t0
            w_hat = dequantize(state)
            err2 = (w_hat - w).pow(2)
            stats["effective_bits"] = state.effective_bits()
            stats["proxy"] += float((f[name].cpu() * err2).sum())
            stats["weight_mse"] = float(err2.mean())
            saved.append((lin, lin.weight.data))
            lin.weight.data = w_hat.to(lin.weight.device, lin.weight.dtype)
        yield stats
    finally:
        for lin, original in saved:
            lin.weight.data = original


@dataclasses.dataclass
class Bench:
    """What every measurement reads: the model, the dev set (none: fidelity alone), the fidelity texts and
    fp32's results on them."""

    retriever: Any
    dev: RetrievalDataset | None
    texts: RetrievalDataset
    settings: RetrievalSettings
    root: Path
    identity: dict[str, str]
    fp32_emb: np.ndarray | None = None
    fp32_ndcg: float | None = None

    def point(self, quant_key: dict) -> dict[str, float | None]:
        """The drops of the model as it is now from fp32: label-free (embedding cosine) and dev nDCG@10 (None
        with no dev set)."""
        emb, ndcg = self.measure(quant_key)
        cos = float(cosine_rows(self.fp32_emb, emb).mean())
        drop = None if ndcg is None else self.fp32_ndcg - ndcg
        return {"cosine": cos, "fidelity_drop": 1.0 - cos, "ndcg": ndcg, "ndcg_drop": drop}

    def measure(self, quant_key: dict) -> tuple[np.ndarray, float | None]:
        """(fidelity-text embeddings, dev nDCG@10) of the model as it is now, both through the cache."""
        key = {"weights": self.identity, "quant": quant_key, "purpose": "sensitivity"}
        whole = replace(self.settings.encode, passage_tokens=0, passage_stride=0)  # one vector per text
        fid = encode_corpus(self.retriever.doc, self.texts, whole, self.root, {**key, "side": "doc"})
        emb = np.concatenate(list(fid.iter_shards()))
        if self.dev is None:
            return emb, None
        out = retrieve(self.retriever, self.dev, self.settings, min(NDCG_K, self.dev.num_docs), self.root, key)
        _, per_query = score(out, self.dev, [NDCG_K])
        return emb, float(per_query[f"ndcg@{NDCG_K}"].mean())


def scan_layer(
    bench: Bench, name: str, cfg: SensitivityRootConfig, fisher: list[dict], hess: list[dict]
) -> dict[str, Any]:
    encoders = bench.retriever.encoders()
    curve = {}
    for bits in cfg.scan.bits:
        spec = replace(spec_for(name, cfg.quant), bits=bits)
        t0 = time.perf_counter()
        with only_layer(encoders, name, spec, fisher, hess) as stats:
            point = bench.point({**quant_identity(spec), "only_layer": name})
        curve[str(bits)] = {**stats, **point, "seconds": time.perf_counter() - t0}
        log.info("%s @ %d bits: fidelity drop %.5f, dev nDCG@10 drop %s", name, bits, *_drops(point))
    return {
        "name": name,
        "type": layer_type(name),
        "params": encoders[0].model.get_submodule(name).weight.numel(),
        "fisher_trace": sum(float(f[name].sum()) for f in fisher),
        "curve": curve,
    }


def _drops(point: dict) -> tuple[float, str]:
    return point["fidelity_drop"], "n/a" if point["ndcg_drop"] is None else f"{point['ndcg_drop']:+.4f}"


def scan_table(bench: Bench, cfg: SensitivityRootConfig, tabs: list[Table]) -> dict[str, Any]:
    """Each frequency tier of the table alone at each width (an empty tier costs and loses nothing)."""
    shares = list(cfg.scan.embedding_tiers)
    spec = tier_spec(cfg.quant)
    groups = table_groups(tabs[0], shares)
    for g in groups:
        g["curve"] = {}
        for bits in cfg.scan.bits:
            t0 = time.perf_counter()
            if not g["rows"]:
                g["curve"][str(bits)] = {
                    "effective_bits": 0.0,
                    "weight_mse": 0.0,
                    "fidelity_drop": 0.0,
                    "ndcg_drop": None if bench.dev is None else 0.0,
                }
                continue
            key = {**quant_identity(replace(spec, bits=bits)), "only_layer": g["name"], "tiers": shares}
            with only_tier(tabs, g["tier"], spec, bits) as stats:
                point = bench.point(key)
            g["curve"][str(bits)] = {**stats, **point, "seconds": time.perf_counter() - t0}
            log.info("%s @ %d bits: fidelity drop %.5f, dev nDCG@10 drop %s", g["name"], bits, *_drops(point))
    return {**table_info(tabs[0], shares), "groups": groups}


def run_sensitivity(cfg: SensitivityRootConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg, run_dir = typed(cfg, SensitivityRootConfig), Path(run_dir)
    check_scan_options(cfg)
    check_model_folders(cfg.model)
    data = load_dataset(cfg.data)
    dev, dev_info = dev_set(data, cfg.scan, cfg.seed)
    log.info("dev set: %d queries, %d records (%s)", dev_info["queries"], dev_info["corpus_docs"], dev_info["corpus"])
    root = cache_root(cfg.cache.dir)
    ensure_writable(root)
    retriever = load_retriever(cfg.model)
    encoders = retriever.encoders()
    layers = scanned_layers(encoders[0].model, cfg)
    # the texts evaluate's quantize stage takes: a Fisher-weighted scheme quantizes each layer as quant=auto will
    calibration = calibration_corpus(data.doc_texts, cfg.quant)
    fisher = [
        squared_gradients(e.model, e.tokenizer, calibration, layers, e.settings.pooling, e.settings.max_length)
        for e in encoders
    ]
    hess, rounding = [{} for _ in encoders], {"method": cfg.quant.method, "hessian_seconds": 0.0}
    if cfg.quant.method == "gptq":  # every scanned layer's fp32 inputs, once
        for e, h in zip(encoders, hess):
            found, cost = hessians(e.model, e.tokenizer, calibration, layers, e.settings.max_length)
            h.update(found)
            rounding["hessian_seconds"] += cost["hessian_seconds"]
            rounding["calibration_tokens"] = cost["calibration_tokens"]
        rounding |= {"gptq_damp": cfg.quant.gptq_damp, "act_order": cfg.quant.act_order}
    tabs = tables(encoders, cfg.scan.embedding_tiers, calibration) if cfg.scan.embeddings else []
    texts = fidelity_set(data, cfg.scan.fidelity_texts, cfg.seed)
    bench = Bench(retriever, dev, texts, RetrievalSettings.of(cfg), root, model_identity(retriever))
    bench.fp32_emb, bench.fp32_ndcg = bench.measure({"name": "none"})
    rows = [scan_layer(bench, name, cfg, fisher, hess) for name in layers]
    hess.clear()
    report = build_report(cfg, bench, dev_info, rows, len(calibration))
    rounding["round_seconds"] = sum(p.get("round_seconds", 0.0) for r in rows for p in r["curve"].values())
    points = sum(p["seconds"] for r in rows for p in r["curve"].values())  # rounding + measuring, every point
    rounding["measure_seconds"] = points - rounding["round_seconds"]
    report["rounding"] = rounding
    report["model_size"] = model_size(encoders[0].model, layers, tabs[0].name if tabs else None)
    if tabs:
        report["embedding"] = scan_table(bench, cfg, tabs)
    report["seconds"] = time.perf_counter() - t_start
    write_json(run_dir / "sensitivity.json", report)
    write_atomic(run_dir / "sensitivity.txt", [table(report)])
    publish(cfg, run_dir, report)
    log.info("sensitivity of %d layers x %s bits -> %s", len(rows), list(cfg.scan.bits), run_dir / "sensitivity.json")
    return report


def build_report(cfg: SensitivityRootConfig, bench: Bench, dev_info: dict, rows: list[dict], n_calib: int) -> dict:
    bits = list(cfg.scan.bits)
    m = cfg.model
    return {
        "format": SCAN_FORMAT,
        "medret_version": medret.__version__,
        "model": {"name": m.name, "path": m.path, "revision": m.revision, "weights": bench.identity},
        # the scheme quant=auto reuses, widths aside; a partial scan (scan.layers) names its layers exactly
        "quant": quant_identity(replace(cfg.quant, bits=None, include=scanned_include(cfg, rows))),
        "bits": bits,
        "dev": dev_info,
        "fidelity": {"texts": bench.texts.num_docs, "measure": "1 - mean cosine to fp32 of corpus-text embeddings"},
        "ndcg": {"measure": f"fp32 minus quantized mean dev nDCG@{NDCG_K}", "k": NDCG_K, "measured": cfg.scan.ndcg},
        "proxy": {"name": "fisher_weighted_error", "definition": PROXY, "calibration_texts": n_calib},
        "fp32": {f"dev_ndcg@{NDCG_K}": bench.fp32_ndcg},
        "layers": rows,
        "types": by_type(rows, bits),
        "correlation": correlations(rows, bits),
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "git": git_commit(),
    }


def scanned_include(cfg: SensitivityRootConfig, rows: list[dict]) -> list[str]:
    """quant.include for quant=auto: the run's patterns, or exactly the scanned layers when scan.layers narrowed
    them (a layer that was not scanned has no curve to choose its width from, so it stays fp32)."""
    return list(cfg.quant.include) if list(cfg.scan.layers) == ["*"] else [r["name"] for r in rows]


def publish(cfg: SensitivityRootConfig, run_dir: Path, report: dict) -> None:
    """Log the per-(layer, width) points and the correlations to W&B when logger=wandb (ids and numbers only)."""
    log.info("sensitivity table\n%s", table(report))
    tracker = start_tracker(cfg.logger, run_dir, report["config"], job_type="sensitivity", tags=["task:sensitivity"])
    points = [
        {"layer": r["name"], "type": r["type"], "bits": int(b), **{k: v for k, v in p.items() if k != "seconds"}}
        for r in report["layers"]
        for b, p in r["curve"].items()
    ]
    tracker.log_table("sensitivity", points)
    pooled = report["correlation"]["pooled"]
    tracker.log_summary({f"spearman_proxy_{k}": v for k, v in pooled.items() if v is not None})
    tracker.finish()
