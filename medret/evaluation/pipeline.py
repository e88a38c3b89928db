"""The evaluate spine: data -> retriever -> quantize -> encode -> index -> search -> metrics -> outputs."""

from __future__ import annotations

import logging
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import medret
from medret.cache import cache_key, cache_root, ensure_writable
from medret.config import EvaluateConfig
from medret.data import RetrievalDataset, load_dataset
from medret.errors import InputError
from medret.evaluation import baseline as bl
from medret.evaluation.encode import CorpusEmbeddings, encode_corpus, encode_one_shard, encode_queries
from medret.evaluation.fidelity import compare
from medret.evaluation.outputs import write_json, write_jsonl, write_trec_run
from medret.index import build_index, check_gpu_limits, exact_topk, recall_vs_exact
from medret.index.faiss_index import choose_placement
from medret.metrics import METRIC_NAMES, bootstrap_ci, evaluate_run, mean_metrics
from medret.models import Retriever, load_retriever
from medret.quant import needs_calibration, quantize_retriever, validate
from medret.quant.apply import state_bytes
from medret.quant.persist import save_quantized
from medret.tracking import start_tracker

log = logging.getLogger(__name__)

HEADLINE = ("ndcg@10", "recall@100", "precision@10", "f1@10", "mrr@10", "map@100")


def check_k_values(k_values: list[int], num_docs: int, where: str) -> list[int]:
    ks = sorted(set(int(k) for k in k_values))
    if not ks or ks[0] < 1:
        raise InputError(f"eval.k_values={list(k_values)}: expected positive integers")
    if ks[-1] > num_docs:
        raise InputError(f"eval.k_values: k={ks[-1]} is larger than the corpus of {where} ({num_docs} documents)")
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
    for pkg in ("torch", "transformers", "faiss-cpu", "faiss-gpu-cu12", "numpy", "bitsandbytes", "hydra-core", "wandb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git_commit() -> dict[str, Any]:
    root = Path(medret.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            != ""
        )
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


def check_gate(metric: str, ks: list[int]) -> None:
    name, _, k = metric.partition("@")
    if name not in METRIC_NAMES or not k.isdigit() or int(k) not in ks:
        raise InputError(
            f"eval.gate_metric={metric!r}: expected <metric>@<k> with metric in "
            f"{', '.join(METRIC_NAMES)} and k in eval.k_values {ks}"
        )


def load_checked_data(cfg: EvaluateConfig) -> tuple[RetrievalDataset, list[int]]:
    ks = sorted(set(int(k) for k in cfg.eval.k_values))
    check_gate(cfg.eval.gate_metric, ks)
    data = load_dataset(cfg.data)
    ks = check_k_values(list(cfg.eval.k_values), data.num_docs, data.name)
    return data, ks


@dataclass
class Retrieval:
    corpus: CorpusEmbeddings
    query_emb: np.ndarray
    ranked: list[list[tuple[str, float]]]
    timings: dict[str, float | None]
    index: dict[str, Any]


def retrieve(retriever: Retriever, data: RetrievalDataset, cfg, depth: int, root: Path, key_parts: dict) -> Retrieval:
    """Encode (through the shard cache), index, search (batch, then single queries for latency), fold."""
    corpus = encode_corpus(retriever.doc, data, cfg, root, {**key_parts, "side": "doc"})
    query_emb, t_queries, q_hit = encode_queries(retriever.query, data, cfg, root, {**key_parts, "side": "query"})
    index = build_index(corpus.iter_shards(), cfg.index, corpus.dim)
    n_vec = corpus.num_vectors
    fanout = 1 if n_vec == data.num_docs else min(cfg.eval.passage_fanout, int(np.bincount(corpus.doc_index).max()))
    k_search = min(n_vec, depth * fanout)
    check_gpu_limits(cfg.index, k_search, index.placement)
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
    info: dict[str, Any] = {
        "factory": cfg.index.factory,
        "placement": index.placement,
        "bytes": index.nbytes,
        "build_s": index.build_seconds,
        "vectors": n_vec,
    }
    if cfg.index.factory != "Flat":  # the index's own approximation error, against exact search
        exact = exact_topk(query_emb, corpus.iter_shards(), k_search)
        for k in sorted({min(10, k_search), k_search}):
            info[f"recall_vs_exact@{k}"] = recall_vs_exact(hits, exact, k)
    timings = {
        "encode_docs_per_s": corpus.encoded_vectors / corpus.encode_s if corpus.encode_s > 0 else None,
        "encode_queries_per_s": len(query_emb) / t_queries if t_queries > 0 else None,
        "encode_docs_s": corpus.encode_s,
        "encode_queries_s": t_queries,
        "shards_encoded": corpus.shards_encoded,
        "shards_cached": corpus.shards_cached,
        "queries_cached": q_hit,
        "index_build_s": index.build_seconds,
        "search_s": t_search,
        "search_qps": len(query_emb) / t_search if t_search > 0 else None,
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(lat, 95) * 1e3),
    }
    ranked = fold_to_records(scores, hits, corpus.doc_index, data.doc_ids, depth)
    return Retrieval(corpus, query_emb, ranked, timings, info)


def score(out: Retrieval, data: RetrievalDataset, ks: list[int]) -> tuple[list[str], dict[str, np.ndarray]]:
    run = {q: [d for d, _ in h] for q, h in zip(data.query_ids, out.ranked)}
    return evaluate_run(run, data.qrels, ks, data.query_ids)


def model_identity(retriever: Retriever) -> dict[str, str]:
    """Digests of the weights as loaded (before quantization): part of every cache key."""
    out = {"doc": bl.weights_digest(retriever.doc.model)}
    shared = retriever.query.model is retriever.doc.model
    out["query"] = out["doc"] if shared else bl.weights_digest(retriever.query.model)
    return out


def baseline_path(cfg, root: Path, identity: dict, retriever: Retriever, data: RetrievalDataset, ks: list[int]) -> Path:
    parts = {
        "weights": identity,
        "encoders": {"doc": vars(retriever.doc.settings), "query": vars(retriever.query.settings)},
        "corpus": data.corpus_fingerprint,
        "queries": data.queries_fingerprint(),
        "passages": [cfg.data.passage_tokens, cfg.data.passage_stride, cfg.eval.passage_fanout],
        "ks": ks,
        "index": OmegaConf.to_container(
            OmegaConf.structured(cfg.index) if not isinstance(cfg.index, DictConfig) else cfg.index, resolve=True
        ),
    }
    return root / "baselines" / f"{cache_key(parts)}.npz"


def quant_identity(cfg) -> dict:
    q = cfg.quant if isinstance(cfg.quant, DictConfig) else OmegaConf.structured(cfg.quant)
    d = OmegaConf.to_container(q, resolve=True)
    d.pop("save_dir", None)
    return d


def run_evaluate(cfg: EvaluateConfig | DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    # Cheap checks first: bad data, k or quant options fail before any model is loaded.
    validate(cfg.quant, cfg.model.device)
    if cfg.model.adapter and cfg.quant.name in ("none", "fp16", "bf16"):
        raise InputError(
            f"model.adapter={cfg.model.adapter}: a QLoRA adapter sits on a quantized base; set the "
            "quant it was trained over"
        )
    data, ks = load_checked_data(cfg)
    depth = ks[-1]
    log.info("data %s: %d documents, %d judged queries", data.name, data.num_docs, len(data.query_ids))

    root = cache_root(cfg.cache.dir)
    ensure_writable(root)
    check_gpu_limits(cfg.index, depth, choose_placement(cfg.index))

    retriever = load_retriever(cfg.model)
    device = retriever.doc.device
    identity = model_identity(retriever)
    base_file = baseline_path(cfg, root, identity, retriever, data, ks)
    base = bl.load_baseline(base_file, data.query_ids)
    if cfg.quant.name != "none" and base is None and cfg.cache.only_shard is None:
        log.info("fp32 baseline not cached: computing it once (%s)", base_file)
        fp32 = retrieve(retriever, data, cfg, depth, root, {"weights": identity, "quant": {"name": "none"}})
        _, fp32_pq = score(fp32, data, ks)
        bl.save_baseline(
            base_file,
            data.query_ids,
            fp32_pq,
            [[d for d, _ in h] for h in fp32.ranked],
            fp32.query_emb,
            fp32.corpus.sample,
        )
        base = bl.load_baseline(base_file, data.query_ids)

    calibration = None
    if needs_calibration(cfg.quant):  # unlabelled corpus texts for Fisher-weighted k-means
        calibration = list(data.doc_texts[: max(cfg.quant.calibration_texts * 4, 256)])
    quant_info = quantize_retriever(retriever, cfg.quant, calibration=calibration)
    if cfg.quant.save_dir and cfg.quant.name not in ("none",):
        quant_info["saved_to"] = str(save_quantized(retriever, Path(cfg.quant.save_dir), quant_info))
    qkey = {"name": "none"} if cfg.quant.name == "none" else quant_identity(cfg)
    if cfg.model.adapter:
        from medret.models.lora import load_adapters

        encoders = [retriever.doc] if retriever.query.model is retriever.doc.model else [retriever.doc, retriever.query]
        meta = load_adapters([e.model for e in encoders], Path(cfg.model.adapter), quant_identity(cfg))
        quant_info["adapter"] = {
            "path": cfg.model.adapter,
            "r": meta["r"],
            "step": meta.get("step"),
            "digest": meta["digest"],
            "params": sum(p.numel() for e in encoders for n, p in e.model.named_parameters() if "lora_" in n),
        }
        # the adapters are part of the deployed model: count their fp32 bits against the quantized params
        bits, n = quant_info.get("effective_bits_per_param"), quant_info.get("quantized_params")
        if bits and n:
            quant_info["effective_bits_per_param_with_adapter"] = bits + 32 * quant_info["adapter"]["params"] / n
        quant_info["model_bytes"] = sum(state_bytes(e.model) for e in encoders)
        qkey = {**qkey, "adapter": meta["digest"]}
    if cfg.cache.only_shard is not None:  # an encode-only array task: fill one shard and stop
        done = encode_one_shard(
            retriever.doc, data, cfg, root, {"weights": identity, "quant": qkey, "side": "doc"}, cfg.cache.only_shard
        )
        write_json(run_dir / f"shard-{cfg.cache.only_shard}.json", done)
        log.info(
            "shard %d/%d %s -> %s",
            done["shard"] + 1,
            done["shards"],
            "encoded" if done["encoded"] else "already cached",
            done["dir"],
        )
        return {"shard": done}
    out = retrieve(retriever, data, cfg, depth, root, {"weights": identity, "quant": qkey})
    qids, per_query = score(out, data, ks)
    ranked_ids = [[d for d, _ in h] for h in out.ranked]
    if cfg.quant.name == "none" and base is None:
        bl.save_baseline(base_file, qids, per_query, ranked_ids, out.query_emb, out.corpus.sample)
    metrics = mean_metrics(per_query)
    n_boot = cfg.eval.bootstrap_resamples
    ci = {m: list(bootstrap_ci(per_query[m], n_resamples=n_boot, seed=cfg.seed)) for m in HEADLINE if m in per_query}

    fidelity = None
    if base is not None and cfg.quant.name != "none":
        heads = tuple(dict.fromkeys([*(m for m in HEADLINE if m in per_query), cfg.eval.gate_metric]))
        fidelity = compare(
            base,
            per_query,
            ranked_ids,
            out.query_emb,
            out.corpus.sample,
            heads,
            cfg.eval.gate_metric,
            cfg.eval.gate_max_drop,
            n_boot,
            cfg.seed,
        )

    by_category: dict[str, dict[str, float]] = {}
    if data.query_categories:
        cats = np.array([data.query_categories.get(q, "") for q in qids])
        for c in sorted(set(cats)):
            mask = cats == c
            entry = {
                "num_queries": int(mask.sum()),
                **{m: float(per_query[m][mask].mean()) for m in HEADLINE if m in per_query},
            }
            if fidelity is not None:
                for m in HEADLINE:
                    if m in per_query:
                        entry[f"delta_{m}"] = float((per_query[m][mask] - base["per_query"][m][mask]).mean())
            by_category[c] = entry

    throughput = {**out.timings, "total_s": time.perf_counter() - t_start, **_peak_memory(device)}
    sizes = {
        "model_param_bytes": quant_info["model_bytes"],
        "fp32_model_param_bytes": quant_info["fp32_model_bytes"],
        "embedding_bytes": int(out.corpus.num_vectors * out.corpus.dim * 4),
        "index_bytes": out.index["bytes"],
        "embedding_dim": int(out.corpus.dim),
    }
    resolved = OmegaConf.to_container(
        OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg, resolve=True
    )
    results: dict[str, Any] = {
        "medret_version": medret.__version__,
        "config": resolved,
        "data": {
            "name": data.name,
            "num_docs": data.num_docs,
            "num_passages": out.corpus.num_vectors,
            "num_queries": len(qids),
            "num_qrels": sum(len(v) for v in data.qrels.values()),
            "unknown_qrels": data.unknown_qrels,
            "sources": data.sources,
        },
        "metrics": metrics,
        "metrics_ci95": ci,
        "by_category": by_category,
        "throughput": throughput,
        "sizes": sizes,
        "quant": quant_info,
        "index": out.index,
        "cache": {"root": str(root), "corpus_dir": str(out.corpus.store.dir) if out.corpus.store else None},
        "device": _device_info(device, out.index["placement"]),
        "versions": _versions(),
        "git": _git_commit(),
        "baseline_cache": str(base_file),
    }
    if fidelity is not None:
        results["fidelity"] = {k: v for k, v in fidelity.items() if k not in ("deltas", "verdict", "per_query")}
        results["deltas"] = fidelity["deltas"]
        results["verdict"] = fidelity["verdict"]

    rows = []
    for i, q in enumerate(qids):
        row: dict[str, Any] = {"query_id": q}
        if data.query_categories:
            row["category"] = data.query_categories.get(q)
        row["num_relevant"] = sum(v > 0 for v in data.qrels[q].values())
        row.update({m: float(v[i]) for m, v in per_query.items()})
        if fidelity is not None:
            row["top10_overlap_fp32"] = float(fidelity["per_query"]["top10_overlap"][i])
            row["rbo_fp32"] = float(fidelity["per_query"]["rbo"][i])
            row.update(
                {f"delta_{m}": float(per_query[m][i] - base["per_query"][m][i]) for m in HEADLINE if m in per_query}
            )
        rows.append(row)
    texts = dict(zip(data.query_ids, data.query_texts))
    # query text reaches per_query.jsonl only with write_text, and W&B only with logger.log_text
    file_rows = [{**r, "query_text": texts[r["query_id"]]} for r in rows] if cfg.write_text else rows

    tags = [f"scheme:{cfg.quant.name}", f"index:{cfg.index.name}", f"data:{cfg.data.name}"]
    if cfg.quant.bits is not None:
        tags.append(f"bits:{cfg.quant.bits}")
    tracker = start_tracker(cfg.logger, run_dir, resolved, tags=tags)
    results["wandb"] = {"run_id": tracker.run.id if tracker.run else None, "dir": tracker.run_dir}
    write_trec_run(run_dir / "run.trec", dict(zip(qids, out.ranked)), tag=f"medret-{cfg.model.name}-{cfg.quant.name}")
    write_jsonl(run_dir / "per_query.jsonl", file_rows)
    write_json(run_dir / "results.json", results)
    summary: dict[str, Any] = {
        **metrics,
        **{f"throughput/{k}": v for k, v in throughput.items() if v is not None},
        **{f"size/{k}": v for k, v in sizes.items()},
    }
    summary.update({f"index/{k}": v for k, v in out.index.items() if isinstance(v, (int, float))})
    summary.update({f"ci95_low/{m}": v[0] for m, v in ci.items()})
    summary.update({f"ci95_high/{m}": v[1] for m, v in ci.items()})
    summary["data/name"] = data.name
    if quant_info.get("model_bytes") is not None:
        summary["quant/model_bytes"] = quant_info["model_bytes"]
    if quant_info.get("effective_bits_per_param") is not None:
        summary["quant/effective_bits_per_param"] = quant_info["effective_bits_per_param"]
    for c, vals in by_category.items():
        summary.update({f"category/{c}/{m}": v for m, v in vals.items()})
    if fidelity is not None:
        summary.update({f"delta/{m}": d["delta"] for m, d in fidelity["deltas"].items()})
        summary.update({f"delta_ci_low/{m}": d["ci95"][0] for m, d in fidelity["deltas"].items()})
        summary.update({f"delta_ci_high/{m}": d["ci95"][1] for m, d in fidelity["deltas"].items()})
        summary["fidelity/embedding_cosine_mean"] = fidelity["embedding_cosine"]["mean"]
        summary["fidelity/embedding_cosine_min"] = fidelity["embedding_cosine"]["min"]
        summary["fidelity/top10_overlap"] = fidelity["ranking"]["top10_overlap"]
        summary["fidelity/rbo"] = fidelity["ranking"]["rbo_p0.9"]
        summary["verdict/accept"] = int(fidelity["verdict"]["accept"])
    tracker.log_summary(summary)
    tracker.log_per_query(rows, texts if cfg.logger.log_text else None)
    tracker.log_table("quant_layers", quant_info.get("layers", []))
    tracker.finish()
    log.info(
        "nDCG@10 %.4f  R@100 %s  P@10 %.4f  (%d queries)%s -> %s",
        metrics.get("ndcg@10", float("nan")),
        f"{metrics['recall@100']:.4f}" if "recall@100" in metrics else "-",
        metrics.get("precision@10", float("nan")),
        len(qids),
        "" if fidelity is None else f"  verdict {'ACCEPT' if fidelity['verdict']['accept'] else 'REJECT'}",
        run_dir / "results.json",
    )
    return results
