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
    gate_deltas = np.asarray(new_per_query[gate_metric], np.float64) - np.asarray(base["per_query"][gate_metric])
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
        "verdict": verdict(deltas[gate_metric], gate_deltas, gate_metric, gate_max_drop),
    }


Z95 = 1.959964  # the normal quantile behind a two-sided 95% interval


def queries_to_decide(per_query_deltas: np.ndarray, drop: float, max_drop: float) -> int | None:
    """How many queries like these a 95% CI needs before it clears the gate on one side: the CI half-width
    1.96 sd / sqrt(n) must fit within |max_drop - drop|. None when the drop sits on the gate itself."""
    sd = float(np.std(per_query_deltas, ddof=1)) if len(per_query_deltas) > 1 else 0.0
    margin = abs(max_drop - drop)
    if margin == 0.0:
        return None
    return max(len(per_query_deltas), int(np.ceil((Z95 * sd / margin) ** 2)))


def verdict(gate: dict, per_query_deltas: np.ndarray, metric: str, max_drop: float) -> dict:
    """accept: even the CI's worst drop is within the gate; reject: even its best drop is beyond it;
    inconclusive: the CI straddles the gate (more queries would decide; their estimated number is given)."""
    drop = -gate["delta"]
    drop_hi, drop_lo = -gate["ci95"][0], -gate["ci95"][1]  # (fp32 - quantized) bounds
    if drop_hi <= max_drop:
        outcome = "accept"
    elif drop_lo > max_drop:
        outcome = "reject"
    else:
        outcome = "inconclusive"
    n = len(per_query_deltas)
    return {
        "metric": metric,
        "max_drop": max_drop,
        "drop": drop,
        "drop_lower_ci95": drop_lo,
        "drop_upper_ci95": drop_hi,
        "outcome": outcome,
        "accept": outcome == "accept",
        "queries": n,
        "queries_to_decide": n if outcome != "inconclusive" else queries_to_decide(per_query_deltas, drop, max_drop),
    }
