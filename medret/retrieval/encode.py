"""Streaming encode through the shard cache: records in shards, each cached on disk, so memory
stays flat as the corpus grows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
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
    shards_waited: int = 0  # of the cached ones: written by a concurrent job while this one waited
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


POLL_S = 0.5  # how often a job waiting on shards another job is encoding looks again


@dataclass
class ShardFill:
    """What one job did to fill a store: shards it encoded (their owners), time spent, shards waited for."""

    owners: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    vectors: int = 0
    waited: set[int] = field(default_factory=set)


def fill_shards(store: ShardStore, shards: list[int], encode: Callable[[int], tuple], fill: ShardFill) -> None:
    """Get ``shards`` into the cache, splitting the work with any other job filling the same store:
    claim a free shard and encode it; skip shards a live job holds and come back to them; return
    once every shard is in the manifest (written by this job or another)."""
    pending = list(shards)
    while pending:
        busy = []
        for i in pending:
            state = store.claim(i)
            if state == "busy":
                busy.append(i)
                fill.waited.add(i)
            elif state == "mine":
                with store.holding(i):
                    t0 = time.perf_counter()
                    emb, own = encode(i)
                    fill.seconds += time.perf_counter() - t0
                    store.save(i, emb, own)
                fill.owners[i], fill.vectors = own, fill.vectors + len(emb)
        pending = busy
        if pending:
            time.sleep(POLL_S)


def _shard_encoder(encoder, data: RetrievalDataset, cfg: EncodeSettings, n_shards: int, size: int):
    def encode(i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = i * size, min((i + 1) * size, data.num_docs)
        passages = split_passages(data.doc_texts[a:b], encoder.tokenizer, cfg.passage_tokens, cfg.passage_stride)
        emb = encoder.encode(passages.texts, cfg.batch_size, desc=f"documents {i + 1}/{n_shards}")
        return emb, passages.doc_index + a

    return encode


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
    fill = ShardFill()
    while store.load(i) is None:  # a corrupt shard is forgotten by load and encoded again
        fill_shards(store, [i], _shard_encoder(encoder, data, cfg, store.num_shards, store.shard_size), fill)
    done = {"shard": i, "shards": store.num_shards, "encoded": i in fill.owners, "dir": str(store.dir)}
    if i in fill.owners:
        done.update(vectors=fill.vectors, seconds=fill.seconds)
    return done


def _encode_in_memory(encoder, data: RetrievalDataset, cfg: EncodeSettings) -> CorpusEmbeddings:
    size = cfg.cache.shard_size
    n_shards = max(1, -(-data.num_docs // size))
    encode = _shard_encoder(encoder, data, cfg, n_shards, size)
    t0 = time.perf_counter()
    parts = [encode(i) for i in range(n_shards)]
    spent = time.perf_counter() - t0
    memory = [emb for emb, _ in parts]
    sample = np.concatenate(_first_rows(memory, SAMPLE_ROWS))
    owners = np.concatenate([own for _, own in parts])
    return CorpusEmbeddings(None, owners, sample.shape[1], sample, spent, len(owners), n_shards, 0, _memory=memory)


def _first_rows(shards: Iterable[np.ndarray], rows: int) -> list[np.ndarray]:
    """The first ``rows`` vectors of a stream of shards, reading no further than needed."""
    out, kept = [], 0
    for emb in shards:
        out.append(emb[: rows - kept])
        kept += len(out[-1])
        if kept >= rows:
            break
    return out


def encode_corpus(encoder, data: RetrievalDataset, cfg: EncodeSettings, root, key_parts: dict) -> CorpusEmbeddings:
    store = corpus_store(encoder, data, cfg, root, key_parts)
    if store is None:
        return _encode_in_memory(encoder, data, cfg)
    encode = _shard_encoder(encoder, data, cfg, store.num_shards, store.shard_size)
    fill, owners = ShardFill(), {}
    while len(owners) < store.num_shards:
        fill_shards(store, [i for i in range(store.num_shards) if i not in owners], encode, fill)
        for i in range(store.num_shards):
            got = None if i in owners or i in fill.owners else store.load(i)  # checksummed: others wrote it
            if i in fill.owners or got is not None:  # a corrupt shard was forgotten: the next round encodes it
                owners[i] = fill.owners[i] if i in fill.owners else got[1]
    sample = _first_rows(store.iter_vectors(), SAMPLE_ROWS)  # as later runs read them (float16 included)
    n_new = len(fill.owners)
    log.info(
        "corpus embeddings %s: %d shards encoded, %d from cache (%d waited for while another job wrote them)",
        store.dir,
        n_new,
        store.num_shards - n_new,
        len(fill.waited - set(fill.owners)),
    )
    doc_index = np.concatenate([owners[i] for i in range(store.num_shards)])
    return CorpusEmbeddings(
        store,
        doc_index,
        sample[0].shape[1],
        np.concatenate(sample),
        fill.seconds,
        fill.vectors,
        n_new,
        store.num_shards - n_new,
        len(fill.waited - set(fill.owners)),
    )


def encode_queries(
    encoder, data: RetrievalDataset, cfg: EncodeSettings, root, key_parts: dict
) -> tuple[np.ndarray, float, bool]:
    """Query embeddings (cached as one shard); returns (embeddings, seconds spent encoding, cache hit)."""
    c = cfg.cache
    meta = {**key_parts, "queries": data.queries_fingerprint(), "encoder": vars(encoder.settings)}
    n = len(data.query_texts)
    if not c.enabled:
        t0 = time.perf_counter()
        emb = encoder.encode(list(data.query_texts), cfg.batch_size, desc="queries")
        return emb, time.perf_counter() - t0, False
    store = ShardStore(root, cache_key(meta), meta, n, n, c.dtype)
    fill = ShardFill()
    encode = lambda _: (encoder.encode(list(data.query_texts), cfg.batch_size, desc="queries"), np.arange(n))  # noqa: E731
    while (got := store.load(0)) is None:  # one shard; a concurrent job encoding it is waited for
        fill_shards(store, [0], encode, fill)
    return got[0], fill.seconds, not fill.owners
