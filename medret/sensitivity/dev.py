"""The scan's dev set, never the test queries: the dev queries (a seeded sample of ``data.split``'s), a
dev corpus (their judged records + seeded others) and the label-free fidelity texts (seeded corpus texts)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medret.config import DataConfig
from medret.data import RetrievalDataset
from medret.errors import InputError
from medret.quant.corpus import spread_picks
from medret.sensitivity.config import ScanConfig
from medret.storage import digest

TEST_SPLIT = "test"


def check_dev_options(scan: ScanConfig, data: DataConfig) -> None:
    if scan.dev not in ("split", "holdout"):
        raise InputError(f"scan.dev={scan.dev!r}: expected split (data.split's queries) or holdout (a seeded share)")
    if scan.ndcg and scan.dev == "split" and data.split == TEST_SPLIT:  # fidelity alone reads no query
        raise InputError(
            "scan.dev=split with data.split=test: the scan's dev queries must not be the test queries; use "
            "data.split=train (SciFact) or scan.dev=holdout (a seeded share of the queries, e.g. MedQuAD)"
        )
    if scan.dev_queries is not None and scan.dev_queries < 1:
        raise InputError(f"scan.dev_queries={scan.dev_queries}: expected a positive count (or null for all)")
    if scan.dev_corpus is not None and scan.dev_corpus < 10:
        raise InputError(f"scan.dev_corpus={scan.dev_corpus}: expected at least 10 records (nDCG@10), or null")
    if scan.fidelity_texts < 2:
        raise InputError(f"scan.fidelity_texts={scan.fidelity_texts}: expected at least 2 corpus texts")


def dev_set(data: RetrievalDataset, scan: ScanConfig, seed: int) -> tuple[RetrievalDataset | None, dict[str, Any]]:
    """The dev queries and corpus, and what they are (ids of the queries, sizes) for the scan's JSON; none
    with ``scan.ndcg=false`` (no query is read, so none is held out of a later report)."""
    if not scan.ndcg:
        none = {"mode": "none", "data": data.name, "queries": 0, "of_queries": len(data.query_ids), "query_ids": []}
        return None, {**none, "corpus_docs": 0, "of_docs": data.num_docs, "corpus": "none (scan.ndcg=false)"}
    rng = np.random.default_rng([seed, 1])
    n_q = len(data.query_ids) if scan.dev_queries is None else min(scan.dev_queries, len(data.query_ids))
    rows = np.sort(rng.choice(len(data.query_ids), size=n_q, replace=False))
    dev = data.with_queries(rows)
    qids = dev.query_ids
    if scan.dev_corpus is not None and scan.dev_corpus < data.num_docs:
        dev = _subsample_corpus(dev, scan.dev_corpus, rng)
    info = {
        "mode": scan.dev,
        "data": data.name,  # names the split (SciFact's train, or the split a holdout was drawn from)
        "queries": len(qids),
        "of_queries": len(data.query_ids),
        "query_ids": qids,  # ids only (never text): a holdout's queries can be left out of a later report
        "corpus_docs": dev.num_docs,
        "of_docs": data.num_docs,
        "corpus": "whole" if dev.num_docs == data.num_docs else "judged records of the dev queries + seeded others",
    }
    return dev, info


def _subsample_corpus(dev: RetrievalDataset, size: int, rng: np.random.Generator) -> RetrievalDataset:
    """Every record judged for a dev query (so nDCG's ideal ranking is intact) + seeded others up to ``size``."""
    judged = np.unique(np.concatenate([dev.qrels.docs[slice(*dev.qrels.segment(q))] for q in dev.query_ids]))
    others = rng.permutation(dev.num_docs)
    others = others[~np.isin(others, judged)][: max(0, size - len(judged))]
    keep = np.sort(np.concatenate([judged, others]).astype(np.int64))
    doc_ids = [dev.doc_ids[int(i)] for i in keep]
    qrels = {q: dict(dev.qrels[q].items()) for q in dev.query_ids}
    return RetrievalDataset(
        name=f"{dev.name}-dev{len(keep)}",
        doc_ids=doc_ids,
        doc_texts=[dev.doc_texts[int(i)] for i in keep],
        query_ids=dev.query_ids,
        query_texts=dev.query_texts,
        qrels=qrels,
        query_categories=dev.query_categories,
        sources=dev.sources,
        corpus_fingerprint=f"{dev.corpus_fingerprint}:records:{digest(keep.tolist())}",
    )


def fidelity_set(data: RetrievalDataset, n: int, seed: int) -> RetrievalDataset:
    """A seeded sample of corpus texts (the whole corpus, no labels) for the embedding-cosine measure, as a
    corpus of its own: each point's embeddings go through the shard cache, so a killed scan resumes."""
    picks = spread_picks(data.num_docs, n, [seed, 2])  # positions, kept for the cache fingerprint
    return RetrievalDataset(
        name=f"{data.name}-fidelity{len(picks)}",
        doc_ids=[data.doc_ids[int(i)] for i in picks],
        doc_texts=[data.doc_texts[int(i)] for i in picks],
        query_ids=[],
        query_texts=[],
        qrels={},
        corpus_fingerprint=f"{data.corpus_fingerprint}:fidelity:{digest(picks.tolist())}",
    )
