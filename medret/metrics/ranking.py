"""Vectorised P/R/F1@k, nDCG@k, MRR@k and MAP@k over a [queries x depth] grade matrix.

Definitions follow trec_eval (relevance = grade >= 1): P@k divides by k, recall and MAP by the
number of relevant documents, nDCG uses linear gains and log2(rank + 1) discounts (ndcg_cut),
MRR@k is recip_rank over the top k. A run's ranking is taken as given: callers order ties the way
trec_eval does (score descending, then doc id descending).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from medret.data.dataset import Qrels
from medret.data.judgements import Judgements

METRIC_NAMES = ("precision", "recall", "f1", "ndcg", "mrr", "map")


def _grade_matrix(ranked: np.ndarray, judgements: Judgements, qids: list[str], depth: int) -> np.ndarray:
    g = np.zeros((len(qids), depth), dtype=np.float64)
    for r, q in enumerate(qids):
        row = ranked[r, :depth]
        g[r, : len(row)] = judgements.grades_of(q, row)
    return g


def run_matrix(run: dict[str, list[str]], judgements: Judgements, qids: list[str], depth: int) -> np.ndarray:
    """A run of doc ids as record indices of ``judgements`` (-1: no hit or unjudged, which grade 0 alike)."""
    ranked = np.full((len(qids), depth), -1, dtype=np.int64)
    for r, q in enumerate(qids):
        a, b = judgements.segment(q)
        judged = {judgements.doc_ids[int(d)]: int(d) for d in judgements.docs[a:b]}
        hits = run.get(q, [])[:depth]
        ranked[r, : len(hits)] = [judged.get(d, -1) for d in hits]
    return ranked


def evaluate_run(
    run: dict[str, list[str]], qrels: Qrels | Judgements, k_values: list[int], query_ids: list[str] | None = None
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per-query metrics of a run of doc ids: (query ids, {"ndcg@10": array, ...}).

    ``query_ids`` fixes the order (and must all have a relevant judgement); by default every
    query with a relevant judgement, in qrels order.
    """
    if not isinstance(qrels, Judgements):
        vocab = list(dict.fromkeys(d for judged in qrels.values() for d in judged))
        qrels = Judgements.from_dict(qrels, vocab)
    qids = query_ids if query_ids is not None else [q for q in qrels if qrels.num_relevant(q)]
    depth = max(k_values)
    return evaluate_ranked(run_matrix(run, qrels, qids, depth), qrels, k_values, qids)


def evaluate_ranked(
    ranked: np.ndarray, judgements: Judgements, k_values: list[int], query_ids: list[str]
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per-query metrics of ``ranked`` [queries x depth] record indices (-1 pads), row i for query_ids[i]."""
    qids = query_ids
    depth = max(k_values)
    grades = _grade_matrix(ranked, judgements, qids, depth)
    rel = grades > 0
    num_rel = np.array([judgements.num_relevant(q) for q in qids], dtype=np.float64)
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    hits = np.cumsum(rel, axis=1)
    disc = 1.0 / np.log2(ranks + 1)
    dcg = np.cumsum(np.where(grades > 0, grades, 0) * disc, axis=1)
    ideal = np.zeros_like(grades)
    for r, q in enumerate(qids):
        a, b = judgements.segment(q)
        best = np.sort(judgements.grades[a:b][judgements.grades[a:b] > 0])[::-1][:depth]
        ideal[r, : len(best)] = best
    idcg = np.cumsum(ideal * disc, axis=1)
    prec_at_rank = np.where(rel, hits / ranks, 0.0)
    ap = np.cumsum(prec_at_rank, axis=1) / num_rel[:, None]
    first = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, 0)

    out: dict[str, np.ndarray] = {}
    for k in k_values:
        p = hits[:, k - 1] / k
        r = hits[:, k - 1] / num_rel
        out[f"precision@{k}"] = p
        out[f"recall@{k}"] = r
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"f1@{k}"] = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
            out[f"ndcg@{k}"] = np.where(idcg[:, k - 1] > 0, dcg[:, k - 1] / idcg[:, k - 1], 0.0)
        out[f"mrr@{k}"] = np.where((first > 0) & (first <= k), 1.0 / np.maximum(first, 1), 0.0)
        out[f"map@{k}"] = ap[:, k - 1]
    return qids, out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v.mean()) if len(v) else 0.0 for k, v in per_query.items()}


def paired_delta_ci(base: np.ndarray, new: np.ndarray, n_resamples: int = 2000, seed: int = 0):
    """Mean per-query difference new - base and its paired percentile-bootstrap 95% CI."""
    d = np.asarray(new, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    lo, hi = bootstrap_ci(d, n_resamples=n_resamples, seed=seed)
    return float(d.mean()) if len(d) else 0.0, lo, hi


def bootstrap_ci(
    values: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over queries (scipy.stats.bootstrap)."""
    if len(values) < 2 or np.all(values == values[0]):
        m = float(values.mean()) if len(values) else 0.0
        return m, m
    res = stats.bootstrap(
        (values,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def check_metric(option: str, metric: str, ks: list[int]) -> None:
    """``<metric>@<k>`` with a known metric and a k that is computed; else one clear error line."""
    from medret.errors import InputError

    name, _, k = metric.partition("@")
    if name not in METRIC_NAMES or not k.isdigit() or int(k) not in ks:
        raise InputError(
            f"{option}={metric!r}: expected <metric>@<k> with metric in "
            f"{', '.join(METRIC_NAMES)} and k in eval.k_values {ks}"
        )
