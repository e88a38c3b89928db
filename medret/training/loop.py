"""One training step, the dev score and the hard negatives: the parts of the loop that touch data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medret.data import RetrievalDataset
from medret.losses import info_nce
from medret.retrieval import RetrievalSettings, model_identity, retrieve, score
from medret.training.pairs import PairSplit
from medret.training.session import Session


def optimizer_step(s, loss, max_grad_norm: float) -> None:
    """Backward through accelerate, clip, step the optimizer and the schedule (every train kind's step)."""
    s.acc.backward(loss)
    if s.acc.sync_gradients and max_grad_norm > 0:
        s.acc.clip_grad_norm_(s.params, max_grad_norm)
    s.opt.step()
    s.sched.step()
    s.opt.zero_grad(set_to_none=True)


def _embed(encoder, texts: list[str]) -> torch.Tensor:
    s = encoder.settings
    batch = encoder.tokenizer(
        [s.prefix + t for t in texts], padding=True, truncation=True, max_length=s.max_length, return_tensors="pt"
    ).to(encoder.device)
    hidden = encoder.model(**batch).last_hidden_state
    return encoder.pool(hidden, batch["attention_mask"])


def _batch(split: PairSplit, step: int, batch_size: int, seed: int) -> list[tuple[int, int]]:
    """The pairs of a step: a function of the step alone, so a resumed run sees the same batches."""
    per_epoch = max(1, len(split.pairs) // batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(split.pairs))
    return [split.pairs[i] for i in order[pos * batch_size : (pos + 1) * batch_size]]


def mine_hard_negatives(s: Session, data: RetrievalDataset, split: PairSplit, root: Path) -> dict[int, list[int]]:
    """Top-ranked non-relevant records per training query, with the starting model and medret's index.
    Keyed like evaluate's fp32 run, so an earlier evaluate's corpus shards are reused."""
    n = s.cfg.train.hard_negatives
    train_data = data.with_queries(split.train_queries)
    depth = min(data.num_docs, n + max(len(p) for p in split.positives.values()) + 5)
    key = {"weights": model_identity(s.retriever), "quant": {"name": "none"}}
    out = retrieve(s.retriever, train_data, RetrievalSettings.of(s.cfg), depth, root, key)
    doc_index = {d: i for i, d in enumerate(data.doc_ids)}
    hard = {}
    for qi, hits in zip(split.train_queries, out.ranked_ids):
        hard[qi] = [doc_index[d] for d in hits if doc_index[d] not in split.positives[qi]][:n]
    return hard


def dev_score(s: Session, data: RetrievalDataset, split: PairSplit, ks: list[int], metric: str) -> float:
    dev = data.with_queries(split.dev_queries)
    for m in s.models:
        m.eval()
    # weights change every time: nothing to reuse, so no cache
    out = retrieve(s.retriever, dev, RetrievalSettings.of(s.cfg).without_cache(), max(ks), Path("."), {})
    _, per_query = score(out, dev, ks)
    return float(per_query[metric].mean())


def train_step(s: Session, data: RetrievalDataset, split: PairSplit, hard: dict, step: int) -> float:
    t = s.cfg.train
    for m in s.models:
        m.train()
    losses = []
    for micro in range(t.grad_accum):
        pairs = _batch(split, step * t.grad_accum + micro, t.batch_size, s.cfg.seed)
        docs = [di for _, di in pairs] + [h for qi, _ in pairs for h in hard.get(qi, [])]
        # another pair of the same query in the batch is not a negative for it
        fn = torch.tensor(
            [[d in split.positives[qi] and j != i for j, d in enumerate(docs)] for i, (qi, _) in enumerate(pairs)],
            device=s.acc.device,
        )
        with s.acc.accumulate(*s.models):
            q = _embed(s.retriever.query, [data.query_texts[qi] for qi, _ in pairs])
            d = _embed(s.retriever.doc, [data.doc_texts[di] for di in docs])
            loss = info_nce(q, d, t.temperature, fn)
            optimizer_step(s, loss, t.max_grad_norm)
        losses.append(loss.item())
    return float(np.mean(losses))
