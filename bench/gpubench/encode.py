"""Encoder timing: mean-pooled embeddings of the pre-tokenized texts, the fidelity subset compared
with the fp32 worker's embeddings, then median docs/s over up to three passes within the soft budget."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from gpubench.builders import build_encoder, sync
from gpubench.variants import MiB


def run_encoder(name: str, wd: Path, cfg: dict, dev) -> dict:
    import torch
    import torch.nn.functional as F

    model, autocast, total_b, lin_b, note = build_encoder(name, wd, cfg, dev)
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    note = f"attn {attn}" + (f"; {note}" if note else "")
    if name.endswith("_compile"):
        model = torch.compile(model, dynamic=False)
        note = (note + "; " if note else "") + "torch.compile(dynamic=False), compile time in warm-up"

    def encode(ids, mask):
        ctx = torch.autocast(dev.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(torch.float32)
        return F.normalize((h.float() * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1)

    return time_encoder(name, encode, wd, cfg, dev, total_b, lin_b, note)


def timed_passes(encode, ids, mask, n_batches: int, bs: int, soft_s: float, dev) -> list[float]:
    """Up to three full passes over n_batches batches; fewer when a further one would blow 1.5 x soft_s."""
    times = []
    t_loop = time.perf_counter()
    for _ in range(3):
        sync(dev)
        t0 = time.perf_counter()
        for i in range(n_batches):
            encode(ids[i * bs : (i + 1) * bs], mask[i * bs : (i + 1) * bs])
        sync(dev)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_loop + times[-1] > soft_s * 1.5:
            break
    return times


def time_encoder(name, encode, wd, cfg, dev, total_b, lin_b, note) -> dict:
    import numpy as np
    import torch

    ids = torch.from_numpy(np.load(wd / "ids.npy")).to(dev)
    mask = torch.from_numpy(np.load(wd / "mask.npy")).to(dev)
    bs, n_all = cfg["batch"], ids.shape[0]
    t_start = time.perf_counter()
    # warm-up: first batch (lazy init, compile, bnb state), then a timed second batch for the estimate
    encode(ids[:bs], mask[:bs])
    sync(dev)
    t0 = time.perf_counter()
    encode(ids[bs : 2 * bs], mask[bs : 2 * bs])
    sync(dev)
    t_batch = time.perf_counter() - t0
    # the fidelity subset (first n_cos texts), compared with the fp32 worker's embeddings
    n_cos = min(cfg["n_cos"], n_all)
    emb = torch.cat([encode(ids[s : s + bs], mask[s : s + bs]) for s in range(0, n_cos, bs)])[:n_cos].cpu().numpy()
    np.save(wd / f"emb_{name}.npy", emb)
    fid = fidelity(wd, emb)
    # how many texts fit: at most all of them; fewer when one pass would not fit in a third of the soft budget
    n_batches = min(n_all // bs, max(1, int(cfg["soft_s"] / 3 / max(t_batch, 1e-6))))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_loop = time.perf_counter()
    times = timed_passes(encode, ids, mask, n_batches, bs, cfg["soft_s"], dev)
    peak = torch.cuda.max_memory_allocated() / MiB if dev.type == "cuda" else None
    return {
        "status": "ok",
        "docs_per_s": round(n_batches * bs / statistics.median(times), 1),
        "n_texts": n_batches * bs,
        "repeats": len(times),
        "times_s": [round(t, 4) for t in times],
        "weights_MB": round(total_b / MiB, 2),
        "linear_MB": round(lin_b / MiB, 2),
        "peak_gpu_MB": None if peak is None else round(peak, 1),
        "warmup_s": round(t_loop - t_start, 2),
        "note": note,
        **fid,
    }


def fidelity(wd: Path, emb) -> dict:
    import numpy as np

    ref_p = wd / "emb_fp32.npy"
    if not ref_p.is_file():
        return {}
    ref = np.load(ref_p).astype(np.float64)
    e = emb.astype(np.float64)
    cos = (ref * e).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(e, axis=1))
    mu = ref.mean(0)  # random-weight embeddings share a large common direction: centred cosine removes it
    rc, ec = ref - mu, e - mu
    ccos = (rc * ec).sum(1) / (np.linalg.norm(rc, axis=1) * np.linalg.norm(ec, axis=1))
    return {
        "cos_mean": round(float(cos.mean()), 6),
        "cos_min": round(float(cos.min()), 6),
        "cos_centred_mean": round(float(ccos.mean()), 5),
    }
