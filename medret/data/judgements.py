"""Graded relevance judgements stored compactly: per query a sorted run of record indices and grades.

A 1M-record synthetic set has ~13M judgements; as nested Python dicts they cost ~0.5 GB, as CSR
arrays (int32 record index + int8 grade) ~60 MB. The class still reads as ``{qid: {doc_id: grade}}``
(a Mapping of Mappings) for code that wants that, while metrics look grades up by record index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np


class QueryJudgements(Mapping):
    """One query's judgements as ``{doc_id: grade}``, a view over the shared arrays."""

    def __init__(self, docs: np.ndarray, grades: np.ndarray, doc_ids: Sequence[str]):
        self.docs, self.grades, self._doc_ids = docs, grades, doc_ids
        self._by_id: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.docs)

    def __iter__(self) -> Iterator[str]:
        return (self._doc_ids[int(d)] for d in self.docs)

    def __getitem__(self, doc_id: str) -> int:
        if self._by_id is None:  # built only when a caller looks up by id (small sets: training, tests)
            self._by_id = {self._doc_ids[int(d)]: int(g) for d, g in zip(self.docs, self.grades)}
        return self._by_id[doc_id]

    def items(self):
        return ((self._doc_ids[int(d)], int(g)) for d, g in zip(self.docs, self.grades))

    def values(self):
        return (int(g) for g in self.grades)

    def num_relevant(self) -> int:
        return int(np.count_nonzero(self.grades > 0))


class Judgements(Mapping):
    """``qid -> {doc_id: grade}`` over CSR arrays; ``docs`` index ``doc_ids`` and are sorted per query."""

    def __init__(self, qids: list[str], offsets: np.ndarray, docs: np.ndarray, grades: np.ndarray, doc_ids):
        self.qids, self.offsets, self.docs, self.grades, self.doc_ids = qids, offsets, docs, grades, doc_ids
        self._row = {q: r for r, q in enumerate(qids)}

    @classmethod
    def from_triples(
        cls, qids: list[str], rows: np.ndarray, docs: np.ndarray, grades: np.ndarray, doc_ids: Sequence[str]
    ) -> Judgements:
        """(query row, record index, grade) triples in any order; one triple per (query, record)."""
        if len(grades) and not -128 <= int(grades.min()) <= int(grades.max()) <= 127:
            raise ValueError("relevance grades must fit int8 (-128..127)")  # else they would wrap silently
        order = np.lexsort((docs, rows))
        offsets = np.zeros(len(qids) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(qids)), out=offsets[1:])
        idx_type = np.int32 if len(doc_ids) < 2**31 else np.int64
        return cls(qids, offsets, docs[order].astype(idx_type), grades[order].astype(np.int8), doc_ids)

    @classmethod
    def from_parts(cls, qids: list[str], docs: list, grades: list, doc_ids: Sequence[str]) -> Judgements:
        """Per query, record indices in increasing order and their grades (buffers such as ``array``).
        The parts are emptied as they are copied, so the peak is the result plus one query's part."""
        offsets = np.zeros(len(qids) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        idx_type = np.int32 if len(doc_ids) < 2**31 else np.int64
        all_docs, all_grades = np.empty(offsets[-1], dtype=idx_type), np.empty(offsets[-1], dtype=np.int8)
        for r in range(len(qids)):
            a, b = offsets[r], offsets[r + 1]
            if b > a:
                all_docs[a:b], all_grades[a:b] = np.asarray(docs[r]), np.asarray(grades[r])
            docs[r] = grades[r] = None
        return cls(qids, offsets, all_docs, all_grades, doc_ids)

    @classmethod
    def from_dict(cls, qrels: Mapping[str, Mapping[str, int]], doc_ids: Sequence[str]) -> Judgements:
        """From ``{qid: {doc_id: grade}}`` whose doc ids are all in ``doc_ids`` (KeyError otherwise)."""
        by_id: dict[str, int] | None = None
        rows, docs, grades = [], [], []
        for r, judged in enumerate(qrels.values()):
            if isinstance(judged, QueryJudgements) and judged._doc_ids is doc_ids:  # a subset: reuse the arrays
                d, g = judged.docs, judged.grades
            else:
                by_id = by_id if by_id is not None else {x: i for i, x in enumerate(doc_ids)}
                d = np.fromiter((by_id[x] for x in judged), dtype=np.int64, count=len(judged))
                g = np.fromiter(judged.values(), dtype=np.int64, count=len(judged))
            rows.append(np.full(len(d), r, dtype=np.int64))
            docs.append(np.asarray(d, dtype=np.int64))
            grades.append(np.asarray(g, dtype=np.int64))
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
        return cls.from_triples(list(qrels), cat(rows), cat(docs), cat(grades), doc_ids)

    def __len__(self) -> int:
        return len(self.qids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.qids)

    def __contains__(self, qid) -> bool:
        return qid in self._row

    def __getitem__(self, qid: str) -> QueryJudgements:
        a, b = self.segment(qid)
        return QueryJudgements(self.docs[a:b], self.grades[a:b], self.doc_ids)

    def segment(self, qid: str) -> tuple[int, int]:
        r = self._row[qid]
        return int(self.offsets[r]), int(self.offsets[r + 1])

    @property
    def num_judgements(self) -> int:
        return len(self.docs)

    def num_relevant(self, qid: str) -> int:
        a, b = self.segment(qid)
        return int(np.count_nonzero(self.grades[a:b] > 0))

    def subset(self, qids: list[str]) -> Judgements:
        """The judgements of ``qids`` (each must be present), in that order."""
        if list(qids) == self.qids:  # the usual case (every query judged): share, do not copy ~13M entries
            return self
        segs = [self.segment(q) for q in qids]
        offsets = np.zeros(len(qids) + 1, dtype=np.int64)
        np.cumsum([b - a for a, b in segs], out=offsets[1:])
        docs, grades = np.empty(offsets[-1], dtype=self.docs.dtype), np.empty(offsets[-1], dtype=np.int8)
        for r, (a, b) in enumerate(segs):  # segment by segment: no index array as long as the data
            docs[offsets[r] : offsets[r + 1]], grades[offsets[r] : offsets[r + 1]] = self.docs[a:b], self.grades[a:b]
        return Judgements(list(qids), offsets, docs, grades, self.doc_ids)

    def grades_of(self, qid: str, ranked: np.ndarray) -> np.ndarray:
        """Grades of ``ranked`` record indices (-1 = no hit) for one query, 0 where unjudged."""
        a, b = self.segment(qid)
        docs, grades = self.docs[a:b], self.grades[a:b]
        if not len(docs):
            return np.zeros(len(ranked), dtype=np.int64)
        pos = np.minimum(np.searchsorted(docs, ranked), len(docs) - 1)
        return np.where((ranked >= 0) & (docs[pos] == ranked), grades[pos], 0).astype(np.int64)

    def update_digest(self, h: hashlib._Hash) -> None:
        """Feed the judgements into a hash: query ids, then each query's records and grades."""
        for q in self.qids:
            h.update(q.encode() + b"\0")
        for part in (self.offsets, self.docs, self.grades):
            h.update(str(part.dtype).encode())
            h.update(memoryview(np.ascontiguousarray(part)))  # no copy of ~13M entries
