"""The evaluate spine: data -> retriever -> quantize -> encode -> index -> search -> metrics -> outputs."""

from __future__ import annotations

import logging
import platform
import resource
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import medret
from medret.config import EvaluateConfig
from medret.data import RetrievalDataset, load_dataset
from medret.data.passages import split_passages
from medret.errors import InputError
from medret.evaluation.outputs import write_json, write_jsonl, write_trec_run
from medret.index import build_index
from medret.metrics import bootstrap_ci, evaluate_run, mean_metrics
from medret.models import load_retriever
from medret.quant import quantize_retriever
from medret.tracking import start_tracker

log = logging.getLogger(__name__)

HEADLINE = ("ndcg@10", "recall@100", "precision@10", "f1@10", "mrr@10", "map@100")


def check_k_values(k_values: list[int], num_docs: int, where: str) -> list[int]:
    ks = sorted(set(int(k) for k in k_values))
    if not ks or ks[0] < 1:
        raise InputError(f"eval.k_values={list(k_values)}: expected positive integers")
    if ks[-1] > num_docs:
        raise InputError(
            f"eval.k_values: k={ks[-1]} is larger than the corpus of {where} ({num_docs} documents)"
        )
    return ks


def fold_to_records(
    scores: np.ndarray, hits: np.ndarray, doc_index: np.ndarray, doc_ids: list[str], depth: int
) -> list[list[tuple[str, float]]]:
    """Passage hits -> record hits by max score; ties ordered as trec_eval does (doc id descending)."""
    out = []
    for srow, hrow in zip(scores, hits):
        best: dict[int, float] = {}
        for s, h in zip(srow.tolist(), hrow.tolist()):
            if h < 0:
                continue
            d = int(doc_index[h])
            if d not in best or s > best[d]:
                best[d] = s
        ranked = sorted(((doc_ids[d], s) for d, s in best.items()), key=lambda x: x[0], reverse=True)
        ranked.sort(key=lambda x: x[1], reverse=True)  # stable: keeps doc id descending on ties
        out.append(ranked[:depth])
    return out


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "medret": medret.__version__}
    for pkg in ("torch", "transformers", "faiss-cpu", "faiss-gpu-cu12", "numpy", "bitsandbytes",
                "hydra-core", "wandb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> dict[str, Any]:
    root = Path(medret.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": sha, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _peak_memory(device: torch.device) -> dict[str, int]:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def _device_info(device: torch.device, placement: str) -> dict[str, Any]:
    info: dict[str, Any] = {"encoder": str(device), "index": placement, "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_checked_data(cfg: EvaluateConfig) -> tuple[RetrievalDataset, list[int]]:
    data = load_dataset(cfg.data)
    ks = check_k_values(list(cfg.eval.k_values), data.num_docs, data.name)
    return data, ks


def run_evaluate(cfg: EvaluateConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    # Cheap checks first: bad data or k fails before any model is loaded.
    data, ks = load_checked_data(cfg)
    depth = ks[-1]
    log.info("data %s: %d documents, %d judged queries", data.name, data.num_docs, len(data.query_ids))

    retriever = load_retriever(cfg.model)
    quant_info = quantize_retriever(retriever, cfg.quant)
    device = retriever.doc.device

    passages = split_passages(data.doc_texts, retriever.doc.tokenizer, cfg.data.passage_tokens,
                              cfg.data.passage_stride)
    t0 = time.perf_counter()
    doc_emb = retriever.doc.encode(passages.texts, cfg.model.batch_size, desc="documents")
    t_docs = time.perf_counter() - t0
    t0 = time.perf_counter()
    query_emb = retriever.query.encode(data.query_texts, cfg.model.batch_size, desc="queries")
    t_queries = time.perf_counter() - t0

    index = build_index(doc_emb, cfg.index)
    fanout = 1 if len(passages.texts) == data.num_docs else min(cfg.eval.passage_fanout, passages.max_per_doc)
    k_search = min(len(passages.texts), depth * fanout)
    t0 = time.perf_counter()
    scores, hits = index.search(query_emb, k_search, cfg.index.search_batch_size)
    t_search = time.perf_counter() - t0
    rng = np.random.default_rng(cfg.seed)
    sample = rng.choice(len(query_emb), size=min(cfg.index.latency_sample, len(query_emb)), replace=False)
    lat = []
    for i in sample:
        t0 = time.perf_counter()
        index.search(query_emb[i : i + 1], k_search)
        lat.append(time.perf_counter() - t0)

    ranked = fold_to_records(scores, hits, passages.doc_index, data.doc_ids, depth)
    run = dict(zip(data.query_ids, ranked))
    qids, per_query = evaluate_run({q: [d for d, _ in h] for q, h in run.items()}, data.qrels, ks)
    metrics = mean_metrics(per_query)
    ci = {m: list(bootstrap_ci(per_query[m], seed=cfg.seed)) for m in HEADLINE if m in per_query}

    by_category: dict[str, dict[str, float]] = {}
    if data.query_categories:
        cats = np.array([data.query_categories.get(q, "") for q in qids])
        for c in sorted(set(cats)):
            mask = cats == c
            by_category[c] = {"num_queries": int(mask.sum()),
                              **{m: float(per_query[m][mask].mean()) for m in HEADLINE if m in per_query}}

    throughput = {
        "encode_docs_per_s": len(passages.texts) / t_docs if t_docs > 0 else None,
        "encode_queries_per_s": len(data.query_texts) / t_queries if t_queries > 0 else None,
        "encode_docs_s": t_docs,
        "encode_queries_s": t_queries,
        "index_build_s": index.build_seconds,
        "search_s": t_search,
        "search_qps": len(query_emb) / t_search if t_search > 0 else None,
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(lat, 95) * 1e3),
        "total_s": time.perf_counter() - t_start,
        **_peak_memory(device),
    }
    sizes = {
        "model_param_bytes": retriever.param_bytes(),
        "embedding_bytes": int(doc_emb.nbytes),
        "index_bytes": index.nbytes,
        "embedding_dim": int(doc_emb.shape[1]),
    }
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg,
                                      resolve=True)
    results: dict[str, Any] = {
        "medret_version": medret.__version__,
        "config": resolved,
        "data": {"name": data.name, "num_docs": data.num_docs, "num_passages": len(passages.texts),
                 "num_queries": len(qids), "unknown_qrels": data.unknown_qrels, "sources": data.sources},
        "metrics": metrics,
        "metrics_ci95": ci,
        "by_category": by_category,
        "throughput": throughput,
        "sizes": sizes,
        "quant": quant_info,
        "device": _device_info(device, index.placement),
        "versions": _versions(),
        "git": _git_commit(),
    }

    rows = []
    for i, q in enumerate(qids):
        row: dict[str, Any] = {"query_id": q}
        if data.query_categories:
            row["category"] = data.query_categories.get(q)
        row["num_relevant"] = sum(v > 0 for v in data.qrels[q].values())
        row.update({m: float(v[i]) for m, v in per_query.items()})
        rows.append(row)
    texts = dict(zip(data.query_ids, data.query_texts))
    # query text reaches per_query.jsonl only with write_text, and W&B only with logger.log_text
    file_rows = [{**r, "query_text": texts[r["query_id"]]} for r in rows] if cfg.write_text else rows

    tracker = start_tracker(cfg.logger, run_dir, resolved)
    results["wandb"] = {"run_id": tracker.run.id if tracker.run else None, "dir": tracker.run_dir}
    write_trec_run(run_dir / "run.trec", run, tag=f"medret-{cfg.model.name}-{cfg.quant.name}")
    write_jsonl(run_dir / "per_query.jsonl", file_rows)
    write_json(run_dir / "results.json", results)
    summary: dict[str, Any] = {**metrics, **{f"throughput/{k}": v for k, v in throughput.items() if v is not None},
                               **{f"size/{k}": v for k, v in sizes.items()}}
    for c, vals in by_category.items():
        summary.update({f"category/{c}/{m}": v for m, v in vals.items()})
    tracker.log_summary(summary)
    tracker.log_per_query(rows, texts if cfg.logger.log_text else None)
    tracker.finish()
    log.info("nDCG@10 %.4f  R@100 %s  P@10 %.4f  (%d queries) -> %s", metrics.get("ndcg@10", float("nan")),
             f"{metrics['recall@100']:.4f}" if "recall@100" in metrics else "-",
             metrics.get("precision@10", float("nan")), len(qids), run_dir / "results.json")
    return results
