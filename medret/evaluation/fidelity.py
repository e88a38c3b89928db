"""How far a quantized retriever is from its fp32 self: embeddings, rankings and metric deltas."""

from __future__ import annotations

import numpy as np

from medret.metrics import paired_delta_ci


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(den, 1e-30)


def topk_overlap(a: list[list[str]], b: list[list[str]], k: int = 10) -> np.ndarray:
    return np.array([len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b)])


def rank_biased_overlap(a: list[list[str]], b: list[list[str]], p: float = 0.9) -> np.ndarray:
    """Extrapolated RBO (Webber et al. 2010, eq. 32) of two rankings truncated at the same depth."""
    out = np.empty(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        k = min(len(x), len(y))
        if k == 0:
            out[i] = 0.0
            continue
        seen_x, seen_y, overlap = set(), set(), 0
        agree = np.empty(k)
        for d in range(k):
            u, v = x[d], y[d]
            if u == v:
                overlap += 1
            else:
                overlap += (u in seen_y) + (v in seen_x)
            seen_x.add(u)
            seen_y.add(v)
            agree[d] = overlap / (d + 1)
        depths = np.arange(1, k + 1)
        out[i] = agree[-1] * p**k + (1 - p) / p * np.sum(agree * p**depths)
    return out


def compare(
    base: dict,
    new_per_query: dict[str, np.ndarray],
    new_ranked: list[list[str]],
    new_query_emb: np.ndarray,
    new_doc_sample: np.ndarray,
    headline: tuple[str, ...],
    gate_metric: str,
    gate_max_drop: float,
    n_resamples: int,
    seed: int,
) -> dict:
    q_cos = cosine_rows(base["query_emb"], new_query_emb)
    d_cos = cosine_rows(base["doc_sample"], new_doc_sample)
    both = np.concatenate([q_cos, d_cos])
    overlap = topk_overlap(base["ranked"], new_ranked, 10)
    rbo = rank_biased_overlap(base["ranked"], new_ranked)
    deltas = {}
    for m in headline:
        mean, lo, hi = paired_delta_ci(base["per_query"][m], new_per_query[m], n_resamples, seed)
        deltas[m] = {"fp32": float(np.mean(base["per_query"][m])), "delta": mean, "ci95": [lo, hi]}
    gate = deltas[gate_metric]
    worst_drop = -gate["ci95"][0]  # upper CI bound of (fp32 - quantized)
    return {
        "embedding_cosine": {
            "mean": float(both.mean()),
            "min": float(both.min()),
            "query_mean": float(q_cos.mean()),
            "doc_mean": float(d_cos.mean()),
            "docs_compared": int(len(d_cos)),
        },
        "ranking": {"top10_overlap": float(overlap.mean()), "rbo_p0.9": float(rbo.mean())},
        "per_query": {"top10_overlap": overlap, "rbo": rbo},
        "deltas": deltas,
        "verdict": {
            "metric": gate_metric,
            "max_drop": gate_max_drop,
            "drop": -gate["delta"],
            "drop_upper_ci95": worst_drop,
            "accept": bool(worst_drop <= gate_max_drop),
        },
    }
