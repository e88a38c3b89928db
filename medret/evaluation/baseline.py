"""The fp32 baseline of a (model, data) pair, computed once and cached on disk for every quantized run."""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import numpy as np

from medret.cache import cache_key
from medret.evaluation.judge import Judgement, judge
from medret.retrieval import Retrieval, RetrievalSettings, retrieve
from medret.storage import write_atomic

log = logging.getLogger(__name__)


def save_baseline(
    path: Path,
    query_ids: list[str],
    per_query: dict[str, np.ndarray],
    ranked: list[list[str]],
    query_emb: np.ndarray,
    doc_sample: np.ndarray,
) -> None:
    depth = max((len(r) for r in ranked), default=0)
    buf = io.BytesIO()
    np.savez(
        buf,
        query_ids=np.array(query_ids, dtype=str),
        ranked=np.array([r + [""] * (depth - len(r)) for r in ranked], dtype=str),
        query_emb=query_emb,
        doc_sample=doc_sample,
        metric_names=np.array(list(per_query), dtype=str),
        metrics=np.stack([per_query[m] for m in per_query]),
    )
    write_atomic(path, [buf.getbuffer()])  # concurrent sweep jobs: last complete writer wins, readers never see half


def load_baseline(path: Path, query_ids: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        if z["query_ids"].tolist() != query_ids:
            return None  # another query set under the same key: recompute and overwrite
        return {
            "ranked": [[d for d in row if d] for row in z["ranked"].tolist()],
            "query_emb": z["query_emb"],
            "doc_sample": z["doc_sample"],
            "per_query": dict(zip(z["metric_names"].tolist(), z["metrics"])),
        }
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)  # corrupt: recompute rather than trust it
        return None


def baseline_path(cfg, root: Path, identity: dict, retriever, data, ks: list[int]) -> Path:
    """Everything the fp32 result depends on: weights, encoder settings, data, passages, ks, index."""
    parts = {
        "weights": identity,
        "encoders": {"doc": vars(retriever.doc.settings), "query": vars(retriever.query.settings)},
        "corpus": data.corpus_fingerprint,
        "queries": data.queries_fingerprint(),
        "passages": [cfg.data.passage_tokens, cfg.data.passage_stride, cfg.eval.passage_fanout],
        "ks": ks,
        "index": dataclasses.asdict(cfg.index),
    }
    return root / "baselines" / f"{cache_key(parts)}.npz"


def fp32_baseline(retriever, data, cfg, ks, root: Path, identity: dict, judged: bool):
    """(path, baseline) of the unquantized ``retriever``; computed once per (model, data) and cached on disk when
    the run is ``judged`` against it (an fp32 run writes its own)."""
    base_file = baseline_path(cfg, root, identity, retriever, data, ks)
    base = load_baseline(base_file, data.query_ids)
    if judged and base is None and cfg.cache.only_shard is None:
        log.info("fp32 baseline not cached: computing it once (%s)", base_file)
        fp32 = retrieve(
            retriever, data, RetrievalSettings.of(cfg), ks[-1], root, {"weights": identity, "quant": {"name": "none"}}
        )
        save_fp32_baseline(base_file, fp32, judge(fp32, data, ks, None, cfg.eval, cfg.seed))
        base = load_baseline(base_file, data.query_ids)
    return base_file, base


def save_fp32_baseline(path: Path, out: Retrieval, j: Judgement) -> None:
    save_baseline(path, j.qids, j.per_query, out.ranked_ids, out.query_emb, out.corpus.sample)
