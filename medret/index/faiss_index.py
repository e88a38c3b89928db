"""Inner-product indexes named by one FAISS factory string, built from a stream of embedding shards.

Placement: faiss-gpu on one GPU (or sharded across several); a GPU without faiss-gpu runs exact
search as a chunked torch matmul + topk; otherwise CPU. HNSW and binary stay on CPU. The choice is
logged and reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import faiss
import numpy as np

from medret.config import IndexConfig
from medret.errors import InputError
from medret.index.binary import BinaryRescoreIndex
from medret.index.torch_flat import TorchFlatIndex, torch_cuda_available

log = logging.getLogger(__name__)

GPU_MAX_K = 2048  # FAISS GPU k-selection and nprobe limit
CPU_ONLY = ("HNSW", "binary")


def faiss_gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def factory_string(cfg: IndexConfig, dim: int) -> str:
    f = cfg.factory
    if cfg.opq and "IVF" in f and not f.startswith("OPQ"):
        f = f"OPQ{cfg.m},{f}"
    if "PQ" in f and dim % cfg.m:
        raise InputError(f"index.m={cfg.m}: PQ sub-quantizers must divide the embedding dim {dim}")
    return f


_POSITIVE = ("m", "nbits", "nlist", "nprobe", "hnsw_m", "ef_search", "ef_construction", "rescore_multiplier")


def check_index_options(cfg: IndexConfig) -> None:
    """Index options checked before any encoding: FAISS parses the factory on a stand-in dimension."""
    for name in (*_POSITIVE, "train_size", "search_batch_size"):
        if getattr(cfg, name) < 1:
            raise InputError(f"index.{name}={getattr(cfg, name)}: expected a positive integer")
    if cfg.latency_sample < 0:
        raise InputError(f"index.latency_sample={cfg.latency_sample}: expected 0 or more queries")
    choose_placement(cfg)  # index.device
    if cfg.factory == "binary":
        return
    factory = factory_string(cfg, cfg.m * 16)  # a dim every PQ/OPQ sub-quantizer count divides
    try:
        faiss.index_factory(cfg.m * 16, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1].rsplit(": ", 1)[-1] if str(e).strip() else "invalid"
        raise InputError(f"index.factory={cfg.factory!r}: FAISS rejected it ({reason})") from None
    if "IVF" in factory and cfg.train_size < cfg.nlist:
        raise InputError(f"index.train_size={cfg.train_size}: IVF needs at least index.nlist={cfg.nlist} vectors")


def choose_placement(cfg: IndexConfig) -> str:
    """cpu | cuda (faiss-gpu) | torch (exact search on a GPU without faiss-gpu)."""
    gpus = faiss_gpu_count()
    cpu_only = any(cfg.factory.startswith(p) for p in CPU_ONLY)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise InputError(f"index.device={cfg.device!r}: expected auto, cpu or cuda")
    if cfg.device == "cpu":
        return "cpu"
    if gpus > 0 and not cpu_only:
        return "cuda"
    if torch_cuda_available() and cfg.factory == "Flat":
        return "torch"
    if cfg.device == "cuda":
        why = "FAISS has no GPU version of this index" if cpu_only else "this FAISS build has no GPU support"
        raise InputError(f"index.device=cuda with index.factory={cfg.factory!r}: {why}")
    return "cpu"


def check_gpu_limits(cfg: IndexConfig, k: int, placement: str) -> None:
    if placement in ("cuda", "torch") and k > GPU_MAX_K:
        raise InputError(
            f"search k={k}: FAISS GPU supports k <= {GPU_MAX_K} (lower eval.k_values or use index.device=cpu)"
        )
    if placement == "cuda" and "IVF" in cfg.factory and cfg.nprobe > GPU_MAX_K:
        raise InputError(f"index.nprobe={cfg.nprobe}: FAISS GPU supports nprobe <= {GPU_MAX_K}")


@dataclass
class SearchIndex:
    index: object
    placement: str
    factory: str
    build_seconds: float
    nbytes: int
    _gpu_res: list = field(default_factory=list, repr=False)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for s in range(0, len(queries), batch_size):
            scores[s : s + batch_size], ids[s : s + batch_size] = self.index.search(queries[s : s + batch_size], k)
        return scores, ids


def _set_search_params(index, cfg: IndexConfig) -> None:
    ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
    if ivf is not None:
        ivf.nprobe = cfg.nprobe
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
    if hasattr(base, "hnsw"):
        base.hnsw.efSearch = cfg.ef_search


def _training_sample(shards: Iterator[np.ndarray], size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The first ``size`` vectors, and the shards read to get them (added afterwards, not re-read)."""
    seen, taken = [], 0
    for sh in shards:
        seen.append(sh)
        taken += len(sh)
        if taken >= size:
            break
    return np.concatenate(seen)[:size] if seen else np.empty((0, 0), np.float32), seen


def build_index(shards: Iterable[np.ndarray] | np.ndarray, cfg: IndexConfig, dim: int | None = None) -> SearchIndex:
    """Build from an array or an iterable of float32 shards; only the index itself stays in memory."""
    if isinstance(shards, np.ndarray):
        dim = shards.shape[1]
        shards = [shards]
    it = iter(shards)
    if dim is None:
        first = next(it)
        dim = first.shape[1]
        it = _chain([first], it)
    placement = choose_placement(cfg)
    t0 = time.perf_counter()
    res: list = []
    factory = cfg.factory
    if cfg.factory == "binary":
        index = BinaryRescoreIndex(dim, cfg.rescore_multiplier)
    elif placement == "torch":
        index = TorchFlatIndex(dim)
    else:
        factory = factory_string(cfg, dim)
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            first_line = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
            raise InputError(f"index.factory={cfg.factory!r}: FAISS rejected it ({first_line})") from None
        if isinstance(index, faiss.IndexPreTransform) or "HNSW" in factory:
            base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
            if hasattr(base, "hnsw"):
                base.hnsw.efConstruction = cfg.ef_construction
        if not index.is_trained:
            sample, consumed = _training_sample(it, cfg.train_size)
            nlist = cfg.nlist if "IVF" in factory else 0
            if len(sample) < max(nlist, 1):
                raise InputError(
                    f"index.nlist={cfg.nlist}: needs at least that many training vectors, got {len(sample)}"
                )
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
            it = _chain(consumed, it)
        if placement == "cuda":
            index, res = _to_gpu(index, cfg)
        _set_search_params(index, cfg)
    for sh in it:
        index.add(np.ascontiguousarray(sh, dtype=np.float32))
    build_s = time.perf_counter() - t0
    nbytes = _index_bytes(index, placement)
    log.info(
        "index %s (%s) on %s: %d vectors, %.1f MB, built in %.2fs",
        cfg.name,
        factory,
        placement,
        index.ntotal,
        nbytes / 1e6,
        build_s,
    )
    return SearchIndex(index, placement, factory, build_s, nbytes, res)  # the factory as built (OPQ prefix)


def _chain(head: list, tail: Iterator) -> Iterator:
    yield from head
    yield from tail


def _to_gpu(index, cfg: IndexConfig):
    ngpu = faiss_gpu_count()
    if ngpu > 1:
        co = faiss.GpuMultipleClonerOptions()
        co.shard = cfg.gpu_shard
        return faiss.index_cpu_to_all_gpus(index, co=co, ngpu=ngpu), []
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, 0, index), [res]


def _index_bytes(index, placement: str) -> int:
    if isinstance(index, (BinaryRescoreIndex, TorchFlatIndex)):
        return index.nbytes
    host = faiss.index_gpu_to_cpu(index) if placement == "cuda" else index
    return _serialized_size(host)


def _serialized_size(index) -> int:
    """Bytes of the index as written, counted through a callback: serialize_index would hold a
    second copy of the whole index in memory (244 MB at 1M vectors of dim 64)."""
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count, 1 << 20)
    faiss.write_index(index, writer)
    del writer  # flushes the last buffered chunk
    return total


def exact_topk(queries: np.ndarray, shards: Iterable[np.ndarray], k: int) -> np.ndarray:
    """Exact inner-product top-k ids over a stream of shards (memory bounded by one shard)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    offset = 0
    for sh in shards:
        s = q @ np.ascontiguousarray(sh, dtype=np.float32).T
        ids = np.broadcast_to(np.arange(offset, offset + len(sh)), s.shape)
        cat_s, cat_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1)
        kk = min(k, cat_s.shape[1])
        part = np.argpartition(-cat_s, kk - 1, axis=1)[:, :kk]
        best_s, best_i = np.take_along_axis(cat_s, part, 1), np.take_along_axis(cat_i, part, 1)
        offset += len(sh)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1)


def recall_vs_exact(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k that the index also returns in its top-k."""
    a, e = approx_ids[:, :k], exact_ids[:, :k]
    return float(np.mean([len(set(x) & set(y)) / max(len(y), 1) for x, y in zip(a.tolist(), e.tolist())]))
