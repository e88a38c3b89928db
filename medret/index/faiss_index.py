"""FAISS inner-product indexes built from a factory string, placed on GPU when possible."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from medret.config import IndexConfig
from medret.errors import InputError

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # FAISS GPU k-selection limit


def faiss_gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def choose_placement(requested: str) -> str:
    gpus = faiss_gpu_count()
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if gpus == 0:
            raise InputError("index.device=cuda: this FAISS build has no GPU support or sees no GPU")
        return "cuda"
    if requested != "auto":
        raise InputError(f"index.device={requested!r}: expected auto, cpu or cuda")
    return "cuda" if gpus > 0 else "cpu"


@dataclass
class SearchIndex:
    index: faiss.Index
    placement: str
    factory: str
    build_seconds: float
    nbytes: int
    _gpu_res: list = field(default_factory=list, repr=False)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        if self.placement == "cuda" and k > GPU_MAX_K:
            raise InputError(f"search k={k}: FAISS GPU supports k <= {GPU_MAX_K}")
        k = min(k, self.ntotal)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), batch_size):
            scores[s : s + batch_size], ids[s : s + batch_size] = self.index.search(
                queries[s : s + batch_size], k
            )
        return scores, ids


def build_index(embeddings: np.ndarray, cfg: IndexConfig) -> SearchIndex:
    placement = choose_placement(cfg.device)
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    t0 = time.perf_counter()
    try:
        cpu_index = faiss.index_factory(emb.shape[1], cfg.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
        raise InputError(f"index.factory={cfg.factory!r}: FAISS rejected it ({first})") from None
    res: list = []
    index = cpu_index
    if placement == "cuda":
        res.append(faiss.StandardGpuResources())
        index = faiss.index_cpu_to_gpu(res[0], 0, cpu_index)
    if not index.is_trained:
        index.train(emb)
    index.add(emb)
    build_s = time.perf_counter() - t0
    host = faiss.index_gpu_to_cpu(index) if placement == "cuda" else index
    nbytes = int(faiss.serialize_index(host).nbytes)
    log.info("index %s (%s) on %s: %d vectors, %.1f MB, built in %.2fs",
             cfg.name, cfg.factory, placement, index.ntotal, nbytes / 1e6, build_s)
    return SearchIndex(index, placement, cfg.factory, build_s, nbytes, res)
