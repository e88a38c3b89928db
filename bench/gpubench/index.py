"""Index rows: clustered synthetic unit vectors made on the device, fp32 exact ground truth, then
build time, search time, QPS and recall@k of torch exact search or a faiss index."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path

from gpubench.builders import sync
from gpubench.variants import FAISS_GPU_NOTE, MiB, one_line


def make_vectors(cfg: dict, dev):
    """Clustered synthetic unit vectors (database and queries from the same mixture), seeded, on dev."""
    import torch

    g = torch.Generator(device=dev).manual_seed(1234)
    d, n, nq, nc = 384, cfg["n_vec"], cfg["n_q"], cfg["n_centres"]
    centres = torch.randn(nc, d, generator=g, device=dev)

    def draw(m):
        out = torch.empty(m, d, device=dev)
        for s in range(0, m, 262_144):
            e = min(m, s + 262_144)
            c = torch.randint(0, nc, (e - s,), generator=g, device=dev)
            out[s:e] = torch.nn.functional.normalize(centres[c] + torch.randn(e - s, d, generator=g, device=dev), dim=1)
        return out

    return draw(n), draw(nq)


def torch_topk(x, q, k: int, qb: int):
    import torch

    vals, idx = [], []
    for s in range(0, q.shape[0], qb):
        v, i = (q[s : s + qb] @ x.T).topk(k, dim=1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def recall(gt, found, k: int) -> float:
    import numpy as np

    gt, found = np.asarray(gt)[:, :k], np.asarray(found)[:, :k]
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(gt, found))
    return round(hits / (k * len(gt)), 4)


def timed_search(fn, dev):
    """(result, median seconds of 3 searches after a warm-up search)."""
    fn()
    ts = []
    for _ in range(3):
        sync(dev)
        t0 = time.perf_counter()
        res = fn()
        sync(dev)
        ts.append(time.perf_counter() - t0)
    return res, statistics.median(ts)


def faiss_skip(name: str) -> dict | None:
    """The skipped row when this faiss variant cannot run here, else None."""
    try:
        import faiss
    except ImportError as e:
        return {"status": "skipped", "reason": f"faiss not importable ({one_line(e)}); {FAISS_GPU_NOTE}"}
    if "gpu" in name and (not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0):
        return {
            "status": "skipped",
            "reason": f"installed faiss {faiss.__version__} has no GPU support; {FAISS_GPU_NOTE}",
        }
    return None


def torch_search(name: str, xh, qh, cfg: dict, dev, out: dict):
    import torch

    k, qb, half = cfg["k"], cfg["q_batch"], name.endswith("fp16")
    sync(dev)
    t0 = time.perf_counter()
    xd = torch.from_numpy(xh).to(dev)
    if half:
        xd = xd.half()
    sync(dev)
    out["build_s"] = round(time.perf_counter() - t0, 3)
    qd = torch.from_numpy(qh).to(dev)
    qd = qd.half() if half else qd
    (_, found), t = timed_search(lambda: torch_topk(xd, qd, k, qb), dev)
    out["index_MB"] = round(xd.numel() * xd.element_size() / MiB, 1)
    out["note"] = f"query batch {qb}; build = host->device copy" + (" + fp16 cast" if half else "")
    return found.cpu().numpy(), t


def faiss_index(name: str, d: int, cfg: dict):
    """(empty index, on the GPU for the gpu rows; its description)."""
    import faiss

    if name.endswith("flat"):
        index, desc = faiss.IndexFlatIP(d), "Flat"
    else:
        desc = f"IVF{cfg['nlist']},PQ{cfg['pq_m']}"
        index = faiss.index_factory(d, desc, faiss.METRIC_INNER_PRODUCT)
    if "gpu" in name:
        res = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        co.useFloat16 = not name.endswith("flat")  # IVF-PQ: fp16 lookup tables; Flat stays exact fp32
        index = faiss.index_cpu_to_gpu(res, 0, index, co)
    return index, desc


def faiss_search(name: str, xh, qh, cfg: dict, dev, out: dict):
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    gpu = "gpu" in name
    index, desc = faiss_index(name, xh.shape[1], cfg)
    t0 = time.perf_counter()
    if not index.is_trained:
        index.train(np.ascontiguousarray(xh[: cfg["n_train"]]))
    index.add(xh)
    sync(dev)
    out["build_s"] = round(time.perf_counter() - t0, 3)
    if "ivf" in name:
        if gpu:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", cfg["nprobe"])
        else:
            faiss.extract_index_ivf(index).nprobe = cfg["nprobe"]
        desc += f", nprobe {cfg['nprobe']}, trained on {min(cfg['n_train'], len(xh)):,}"
    (_, found), t = timed_search(lambda: index.search(qh, cfg["k"]), dev)
    with contextlib.suppress(Exception):
        cpu_index = faiss.index_gpu_to_cpu(index) if gpu else index
        out["index_MB"] = round(len(faiss.serialize_index(cpu_index)) / MiB, 1)
    out["note"] = f"faiss {faiss.__version__} {desc}" + (f", {faiss.omp_get_max_threads()} threads" if not gpu else "")
    return found, t


def run_index(name: str, wd: Path, cfg: dict, dev) -> dict:
    import torch

    k = cfg["k"]
    skip = faiss_skip(name) if name.startswith("idx_faiss") else None
    if skip:
        return skip
    x, q = make_vectors(cfg, dev)
    sync(dev)
    _, gt = torch_topk(x, q, k, cfg["q_batch"])  # fp32 exact ground truth, on dev
    gt = gt.cpu().numpy()
    xh, qh = x.cpu().numpy(), q.cpu().numpy()
    del x
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out: dict = {"status": "ok", "n_vectors": xh.shape[0], "n_queries": qh.shape[0], "k": k}
    search = torch_search if name.startswith("idx_torch") else faiss_search
    found, t = search(name, xh, qh, cfg, dev, out)
    out["search_s"] = round(t, 4)
    out["qps"] = round(qh.shape[0] / t, 1)
    out["recall@10"] = recall(gt, found, 10)
    out["recall@100"] = recall(gt, found, min(100, k))
    if dev.type == "cuda":
        out["peak_gpu_MB"] = round(torch.cuda.max_memory_allocated() / MiB, 1)
    return out
