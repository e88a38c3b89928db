"""The judge: metrics with bootstrap CIs, fidelity to the fp32 baseline, the verdict, per-category
slices, the query slices (medret/evaluation/slices.py) and per-query rows. Pure functions of rankings,
embeddings and judgements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medret.config import EvalConfig
from medret.data import RetrievalDataset
from medret.evaluation.fidelity import compare
from medret.evaluation.slices import query_tags, slice_masks
from medret.metrics import bootstrap_ci, check_metric, follow_k_values, mean_metrics
from medret.retrieval import Retrieval, score

HEADLINE = ("ndcg@10", "recall@100", "precision@10", "f1@10", "mrr@10", "map@100")


def check_eval(ev: EvalConfig) -> None:
    """Metric options that need no data: checked before anything is loaded."""
    follow_k_values(ev)  # defaults naming a cut-off the k list lacks follow it (with a warning)
    ks = sorted(set(int(k) for k in ev.k_values))
    check_metric("eval.gate_metric", ev.gate_metric, ks)
    check_metric("eval.optimize_metric", ev.optimize_metric, ks)


@dataclass
class Judgement:
    qids: list[str]
    per_query: dict[str, np.ndarray]
    metrics: dict[str, float]
    ci: dict[str, list[float]]
    fidelity: dict[str, Any] | None
    by_category: dict[str, dict[str, float]]
    # boolean masks aligned with qids: "all", each automatic tag, "category:<value>"
    slices: dict[str, np.ndarray] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)  # qid -> automatic tags it carries


def _by_category(data: RetrievalDataset, qids, per_query, base: dict | None) -> dict[str, dict[str, float]]:
    if not data.query_categories:
        return {}
    cats = np.array([data.query_categories.get(q, "") for q in qids])
    out = {}
    for c in sorted(set(cats) - {""}):  # a query without a category (its field missing) is in none
        mask = cats == c
        entry = {
            "num_queries": int(mask.sum()),
            **{m: float(per_query[m][mask].mean()) for m in HEADLINE if m in per_query},
        }
        if base is not None:
            for m in HEADLINE:
                if m in per_query:
                    entry[f"delta_{m}"] = float((per_query[m][mask] - base["per_query"][m][mask]).mean())
        out[c] = entry
    return out


def judge(
    out: Retrieval, data: RetrievalDataset, ks: list[int], base: dict | None, ev: EvalConfig, seed: int
) -> Judgement:
    """Score a retrieval; against the fp32 baseline when one is given (a quantized run)."""
    qids, per_query = score(out, data, ks)
    n_boot = ev.bootstrap_resamples
    ci = {m: list(bootstrap_ci(per_query[m], n_resamples=n_boot, seed=seed)) for m in HEADLINE if m in per_query}
    fidelity = None
    if base is not None:
        heads = tuple(dict.fromkeys([*(m for m in HEADLINE if m in per_query), ev.gate_metric]))
        fidelity = compare(
            base,
            per_query,
            out.ranked_ids,
            out.query_emb,
            out.corpus.sample,
            heads,
            ev.gate_metric,
            ev.gate_max_drop,
            n_boot,
            seed,
        )
    by_cat = _by_category(data, qids, per_query, base if fidelity is not None else None)
    tags = query_tags(data)
    slices = slice_masks(qids, data, tags)
    return Judgement(qids, per_query, mean_metrics(per_query), ci, fidelity, by_cat, slices, tags)


def per_query_rows(j: Judgement, data: RetrievalDataset, base: dict | None) -> list[dict[str, Any]]:
    """One row per judged query: ids, numbers and deltas, never text."""
    rows = []
    for i, q in enumerate(j.qids):
        row: dict[str, Any] = {"query_id": q}
        if data.query_categories:
            row["category"] = data.query_categories.get(q)
        row["num_relevant"] = data.qrels.num_relevant(q)
        row["slices"] = list(j.tags.get(q, []))  # tag names only
        row.update({m: float(v[i]) for m, v in j.per_query.items()})
        if j.fidelity is not None:
            row["top10_overlap_fp32"] = float(j.fidelity["per_query"]["top10_overlap"][i])
            row["rbo_fp32"] = float(j.fidelity["per_query"]["rbo"][i])
            row.update(
                {f"delta_{m}": float(j.per_query[m][i] - base["per_query"][m][i]) for m in HEADLINE if m in j.per_query}
            )
        rows.append(row)
    return rows
