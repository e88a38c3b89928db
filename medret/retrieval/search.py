"""Encode (through the cache), index, search, fold passages into records, score: the retrieval layer
that evaluate and training share."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medret.config import IndexConfig
from medret.data import RetrievalDataset
from medret.index import SearchIndex, build_index, check_gpu_limits, exact_topk, recall_vs_exact
from medret.metrics import evaluate_ranked
from medret.retrieval.encode import CorpusEmbeddings, EncodeSettings, encode_corpus, encode_queries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalSettings:
    encode: EncodeSettings
    index: IndexConfig
    passage_fanout: int = 8  # cap on passages searched per query when passages fold into records
    seed: int = 0

    @classmethod
    def of(cls, cfg) -> RetrievalSettings:
        """The typed parts of an evaluate/train config that retrieval reads."""
        enc = EncodeSettings(cfg.cache, cfg.data.passage_tokens, cfg.data.passage_stride, cfg.model.batch_size)
        return cls(enc, cfg.index, cfg.eval.passage_fanout, cfg.seed)

    def without_cache(self) -> RetrievalSettings:
        return replace(self, encode=replace(self.encode, cache=replace(self.encode.cache, enabled=False)))


@dataclass
class Retrieval:
    corpus: CorpusEmbeddings
    query_emb: np.ndarray
    ranked: list[list[tuple[str, float]]]
    ranked_index: np.ndarray  # [queries x depth] record indices of ``ranked``, -1 pads: what metrics read
    timings: dict[str, float | None]
    index: dict[str, Any]

    @property
    def ranked_ids(self) -> list[list[str]]:
        return [[d for d, _ in hits] for hits in self.ranked]


def fold_to_records(
    scores: np.ndarray, hits: np.ndarray, doc_index: np.ndarray, doc_ids: Sequence[str], depth: int
) -> tuple[list[list[tuple[str, float]]], np.ndarray]:
    """Passage hits -> record hits by max score; ties ordered as trec_eval does (doc id descending).
    Returns (doc id, score) lists and the same ranking as record indices (-1 pads)."""
    out = []
    index = np.full((len(hits), depth), -1, dtype=np.int64)
    for r, (srow, hrow) in enumerate(zip(scores, hits)):
        best: dict[int, float] = {}
        for s, h in zip(srow.tolist(), hrow.tolist()):
            if h < 0:
                continue
            d = int(doc_index[h])
            if d not in best or s > best[d]:
                best[d] = s
        ranked = sorted(((doc_ids[d], s, d) for d, s in best.items()), key=lambda x: x[0], reverse=True)
        ranked.sort(key=lambda x: x[1], reverse=True)  # stable: keeps doc id descending on ties
        out.append([(doc_id, s) for doc_id, s, _ in ranked[:depth]])
        index[r, : min(depth, len(ranked))] = [d for _, _, d in ranked[:depth]]
    return out, index


def _latencies(index: SearchIndex, query_emb: np.ndarray, k: int, sample: int, seed: int) -> list[float]:
    """Single-query searches of a seeded sample of the queries: what one user waits."""
    rng = np.random.default_rng(seed)
    lat = []
    for i in rng.choice(len(query_emb), size=min(sample, len(query_emb)), replace=False):
        t0 = time.perf_counter()
        index.search(query_emb[i : i + 1], k)
        lat.append(time.perf_counter() - t0)
    return lat


def _index_info(index: SearchIndex, cfg: IndexConfig, corpus: CorpusEmbeddings, query_emb, hits, k: int) -> dict:
    info: dict[str, Any] = {
        "factory": index.factory,  # as built (an OPQ prefix included), not as configured
        "placement": index.placement,
        "bytes": index.nbytes,
        "build_s": index.build_seconds,
        "vectors": corpus.num_vectors,
    }
    if cfg.factory != "Flat":  # the index's own approximation error, against exact search
        exact = exact_topk(query_emb, corpus.iter_shards(), k)
        for kk in sorted({min(10, k), k}):
            info[f"recall_vs_exact@{kk}"] = recall_vs_exact(hits, exact, kk)
    return info


def _timings(corpus: CorpusEmbeddings, n_queries: int, t_queries: float, q_hit: bool, t_search: float, lat) -> dict:
    rate = lambda n, s: n / s if s > 0 else None  # noqa: E731
    return {
        "encode_docs_per_s": rate(corpus.encoded_vectors, corpus.encode_s),
        "encode_queries_per_s": rate(n_queries, t_queries),
        "encode_docs_s": corpus.encode_s,
        "encode_queries_s": t_queries,
        "shards_encoded": corpus.shards_encoded,
        "shards_cached": corpus.shards_cached,
        "shards_waited": corpus.shards_waited,
        "queries_cached": q_hit,
        "search_s": t_search,
        "search_qps": rate(n_queries, t_search),
        "latency_ms_p50": float(np.percentile(lat, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(lat, 95) * 1e3),
    }


def retrieve(
    retriever, data: RetrievalDataset, cfg: RetrievalSettings, depth: int, root: Path, key_parts: dict
) -> Retrieval:
    """Encode (through the shard cache), index, search (batch, then single queries for latency), fold."""
    corpus = encode_corpus(retriever.doc, data, cfg.encode, root, {**key_parts, "side": "doc"})
    query_emb, t_queries, q_hit = encode_queries(
        retriever.query, data, cfg.encode, root, {**key_parts, "side": "query"}
    )
    log.info("index %s: building over %d vectors", cfg.index.name, corpus.num_vectors)
    index = build_index(corpus.iter_shards(), cfg.index, corpus.dim)
    n_vec = corpus.num_vectors
    fanout = 1 if n_vec == data.num_docs else min(cfg.passage_fanout, int(np.bincount(corpus.doc_index).max()))
    k_search = min(n_vec, depth * fanout)
    check_gpu_limits(cfg.index, k_search, index.placement)
    t0 = time.perf_counter()
    scores, hits = index.search(query_emb, k_search, cfg.index.search_batch_size)
    t_search = time.perf_counter() - t0
    lat = _latencies(index, query_emb, k_search, cfg.index.latency_sample, cfg.seed)
    timings = _timings(corpus, len(query_emb), t_queries, q_hit, t_search, lat)
    timings["index_build_s"] = index.build_seconds
    ranked, ranked_index = fold_to_records(scores, hits, corpus.doc_index, data.doc_ids, depth)
    info = _index_info(index, cfg.index, corpus, query_emb, hits, k_search)
    return Retrieval(corpus, query_emb, ranked, ranked_index, timings, info)


def score(out: Retrieval, data: RetrievalDataset, ks: list[int]) -> tuple[list[str], dict[str, np.ndarray]]:
    return evaluate_ranked(out.ranked_index, data.qrels, ks, data.query_ids)
