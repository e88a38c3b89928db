"""The in-memory retrieval set every loader returns, and the checks shared by all loaders."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from medret.data.judgements import Judgements
from medret.errors import InputError

log = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]  # as files are read; a RetrievalDataset holds them as Judgements


@dataclass
class RetrievalDataset:
    name: str
    doc_ids: Sequence[str]  # a list, or a lazy sequence of generated ids (synthetic)
    doc_texts: Sequence[str]  # a list, or a lazy sequence that renders records on demand (synthetic)
    query_ids: list[str]
    query_texts: list[str]
    qrels: Judgements  # a plain {qid: {doc_id: grade}} given here is converted
    query_categories: dict[str, str] = field(default_factory=dict)
    # qrels entries dropped because they name ids absent from the corpus or queries
    unknown_qrels: dict[str, int] = field(default_factory=lambda: {"queries": 0, "docs": 0})
    sources: dict[str, str] = field(default_factory=dict)  # role -> file path
    corpus_fingerprint: str = ""  # identifies the corpus for embedding caches (file digest or generator id)
    # odd but usable input, counted (results.json["data"]["warnings"]): negative grades, empty texts, ...
    warnings: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.qrels, Judgements):  # ~13M judgements at 1M records: arrays, not dicts
            self.qrels = Judgements.from_dict(self.qrels, self.doc_ids)

    @property
    def num_docs(self) -> int:
        return len(self.doc_ids)

    def with_queries(self, positions: Sequence[int]) -> RetrievalDataset:
        """The same corpus with only the queries at ``positions`` (their texts, judgements and categories): the
        one query-subset helper (training's dev split, a scan's dev queries, a holdout left out of a report)."""
        ids = [self.query_ids[int(i)] for i in positions]
        keep = set(ids)
        return dataclasses.replace(
            self,
            query_ids=ids,
            query_texts=[self.query_texts[int(i)] for i in positions],
            qrels=self.qrels.subset(ids),
            query_categories={q: c for q, c in self.query_categories.items() if q in keep},
        )

    def queries_fingerprint(self) -> str:
        h = hashlib.sha256()
        for q, t in zip(self.query_ids, self.query_texts):
            h.update(f"{q}\0{t}\0".encode())
        h.update(b"\1")
        self.qrels.update_digest(h)  # records by index: the corpus fingerprint says which records
        return h.hexdigest()


def check_unique(ids: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise InputError(f"{where}: duplicate {what} id {x!r} (entry {i + 1}); ids must be unique")
        seen.add(x)


def reconcile_qrels(
    qrels: Qrels, doc_ids: list[str], query_ids: list[str], where: str, strict: bool
) -> tuple[Qrels, dict[str, int]]:
    """Drop qrels naming unknown queries/docs: counted and warned once, an error when strict."""
    docs, queries = set(doc_ids), set(query_ids)
    unknown = {"queries": 0, "docs": 0}
    kept: Qrels = {}
    for qid, judged in qrels.items():
        if qid not in queries:
            unknown["queries"] += 1
            continue
        good = {d: g for d, g in judged.items() if d in docs}
        unknown["docs"] += len(judged) - len(good)
        if good:
            kept[qid] = good
    if unknown["queries"] or unknown["docs"]:
        msg = f"{where}: qrels name {unknown['queries']} unknown query ids and {unknown['docs']} unknown doc ids"
        if strict:
            raise InputError(msg + " (data.strict=true)")
        log.warning("%s; dropped (data.strict=true makes this an error)", msg)
    return kept, unknown


def restrict_to_judged(ds: RetrievalDataset, max_queries: int | None) -> RetrievalDataset:
    """Keep queries that have at least one relevant doc, in file order, optionally the first N."""
    pairs = [(q, t) for q, t in zip(ds.query_ids, ds.query_texts) if q in ds.qrels and ds.qrels.num_relevant(q)]
    if max_queries is not None:
        pairs = pairs[:max_queries]
    if not pairs:
        raise InputError(f"{ds.sources.get('qrels', ds.name)}: no query has a relevant judged document")
    ds.query_ids = [q for q, _ in pairs]
    ds.query_texts = [t for _, t in pairs]
    ds.qrels = ds.qrels.subset(ds.query_ids)
    return ds
