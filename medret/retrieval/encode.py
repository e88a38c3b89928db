"""Streaming encode through the shard cache: records in shards, each cached on disk, so memory
stays flat as the corpus grows."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from medret.cache import ShardStore, cache_key
from medret.config import CacheConfig
from medret.data import RetrievalDataset
from medret.data.passages import split_passages
from medret.errors import InputError

log = logging.getLogger(__name__)

SAMPLE_ROWS = 10_000  # first vectors kept in memory for fidelity (cosine vs fp32)


@dataclass(frozen=True)
class EncodeSettings:
    """What encoding reads of the config: the cache, passage splitting and the batch size."""

    cache: CacheConfig
    passage_tokens: int = 0
    passage_stride: int = 0
    batch_size: int = 64


@dataclass
class CorpusEmbeddings:
    store: ShardStore | None
    doc_index: np.ndarray  # vector -> record index
    dim: int
    sample: np.ndarray
    encode_s: float
    encoded_vectors: int
    shards_encoded: int
    shards_cached: int
    _memory: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def num_vectors(self) -> int:
        return len(self.doc_index)

    def iter_shards(self) -> Iterator[np.ndarray]:
        if self.store is None:
            yield from self._memory
        else:
            yield from self.store.iter_vectors()


def corpus_store(encoder, data: RetrievalDataset, cfg: EncodeSettings, root, key_parts: dict) -> ShardStore | None:
    c = cfg.cache
    meta = {
        **key_parts,
        "corpus": data.corpus_fingerprint,
        "encoder": vars(encoder.settings),
        "passages": [cfg.passage_tokens, cfg.passage_stride],
    }
    return ShardStore(root, cache_key(meta), meta, data.num_docs, c.shard_size, c.dtype) if c.enabled else None


def encode_one_shard(encoder, data: RetrievalDataset, cfg: EncodeSettings, root, key_parts: dict, i: int) -> dict:
    """Encode shard ``i`` into the cache (a SLURM array task); a later full run reads it."""
    store = corpus_store(encoder, data, cfg, root, key_parts)
    if store is None:
        raise InputError("cache.only_shard needs cache.enabled=true: the shard goes to the cache")
    if not 0 <= i < store.num_shards:
        raise InputError(
            f"cache.only_shard={i}: the corpus has shards 0..{store.num_shards - 1} "
            f"({data.num_docs} records, cache.shard_size={cfg.cache.shard_size})"
        )
    if store.load(i) is not None:
        return {"shard": i, "shards": store.num_shards, "encoded": False, "dir": str(store.dir)}
    a, b = store.record_range(i)
    passages = split_passages(data.doc_texts[a:b], encoder.tokenizer, cfg.passage_tokens, cfg.passage_stride)
    t0 = time.perf_counter()
    emb = encoder.encode(passages.texts, cfg.batch_size, desc=f"documents {i + 1}/{store.num_shards}")
    store.save(i, emb, passages.doc_index + a)
    return {
        "shard": i,
        "shards": store.num_shards,
        "encoded": True,
        "vectors": len(emb),
        "seconds": time.perf_counter() - t0,
        "dir": str(store.dir),
    }


def encode_corpus(encoder, data: RetrievalDataset, cfg: EncodeSettings, root, key_parts: dict) -> CorpusEmbeddings:
    c = cfg.cache
    store = corpus_store(encoder, data, cfg, root, key_parts)
    n_shards = store.num_shards if store else max(1, -(-data.num_docs // c.shard_size))
    owners, memory, sample = [], [], []
    kept = encoded = n_new = n_cached = 0
    spent = 0.0
    for i in range(n_shards):
        a, b = i * c.shard_size, min((i + 1) * c.shard_size, data.num_docs)
        got = store.load(i) if store else None
        if got is None:
            passages = split_passages(data.doc_texts[a:b], encoder.tokenizer, cfg.passage_tokens, cfg.passage_stride)
            t0 = time.perf_counter()
            emb = encoder.encode(passages.texts, cfg.batch_size, desc=f"documents {i + 1}/{n_shards}")
            spent += time.perf_counter() - t0
            own = passages.doc_index + a
            encoded += len(emb)
            n_new += 1
            if store:
                store.save(i, emb, own)
                if c.dtype == "float16":  # what later runs will read back
                    emb = emb.astype(np.float16).astype(np.float32)
            else:
                memory.append(emb)
        else:
            emb, own = got
            n_cached += 1
        owners.append(own)
        if kept < SAMPLE_ROWS:
            sample.append(emb[: SAMPLE_ROWS - kept])
            kept += len(sample[-1])
    if store:
        log.info("corpus embeddings %s: %d shards encoded, %d from cache", store.dir, n_new, n_cached)
    dim = sample[0].shape[1] if sample else encoder.dim
    return CorpusEmbeddings(
        store, np.concatenate(owners), dim, np.concatenate(sample), spent, encoded, n_new, n_cached, memory
    )


def encode_queries(
    encoder, data: RetrievalDataset, cfg: EncodeSettings, root, key_parts: dict
) -> tuple[np.ndarray, float, bool]:
    """Query embeddings (cached as one shard); returns (embeddings, seconds spent encoding, cache hit)."""
    c = cfg.cache
    meta = {**key_parts, "queries": data.queries_fingerprint(), "encoder": vars(encoder.settings)}
    n = len(data.query_texts)
    store = ShardStore(root, cache_key(meta), meta, n, n, c.dtype) if c.enabled else None
    got = store.load(0) if store else None
    if got is not None:
        return got[0], 0.0, True
    t0 = time.perf_counter()
    emb = encoder.encode(list(data.query_texts), cfg.batch_size, desc="queries")
    spent = time.perf_counter() - t0
    if store:
        store.save(0, emb, np.arange(n))
        if c.dtype == "float16":
            emb = emb.astype(np.float16).astype(np.float32)
    return emb, spent, False
