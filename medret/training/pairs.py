"""(query, positive record) training pairs from qrels, with a held-out dev split of the queries."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from medret.data import RetrievalDataset
from medret.errors import InputError


@dataclass
class PairSplit:
    pairs: list[tuple[int, int]]  # (query index, record index) for training
    train_queries: list[int]
    dev_queries: list[int]
    positives: dict[int, set[int]]  # query index -> relevant record indexes


def split_pairs(data: RetrievalDataset, dev_fraction: float, seed: int) -> PairSplit:
    if not 0.0 <= dev_fraction < 1.0:
        raise InputError(f"train.dev_fraction={dev_fraction}: expected 0 <= fraction < 1")
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    positives: dict[int, set[int]] = {}
    for qi, q in enumerate(data.query_ids):
        pos = {doc_index[d] for d, g in data.qrels.get(q, {}).items() if g > 0 and d in doc_index}
        if pos:
            positives[qi] = pos
    if not positives:
        raise InputError(
            f"{data.sources.get('qrels', data.name)}: no training pairs (no query has a relevant record in the corpus)"
        )
    # a stable, seeded split by query id: the dev queries never contribute training pairs
    rank = sorted(positives, key=lambda qi: hashlib.sha256(f"{seed}:{data.query_ids[qi]}".encode()).digest())
    n_dev = int(round(dev_fraction * len(rank)))
    if dev_fraction > 0 and n_dev == 0 and len(rank) > 1:
        n_dev = 1
    dev, train = sorted(rank[:n_dev]), sorted(rank[n_dev:])
    if not train:
        raise InputError(f"train.dev_fraction={dev_fraction}: leaves no training queries ({len(rank)} in all)")
    pairs = [(qi, di) for qi in train for di in sorted(positives[qi])]
    return PairSplit(pairs, train, dev, positives)
