"""Split long notes into overlapping token windows; hits fold back to their record by max score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medret.errors import InputError


@dataclass
class Passages:
    texts: list[str]
    doc_index: np.ndarray  # passage -> index of its record in the corpus

    @property
    def max_per_doc(self) -> int:
        return int(np.bincount(self.doc_index).max()) if len(self.doc_index) else 0


def split_passages(texts: list[str], tokenizer, tokens: int, stride: int) -> Passages:
    """Windows of ``tokens`` tokens, consecutive windows sharing ``stride`` tokens.

    Cuts at the tokenizer's character offsets, so each passage is an exact slice of the note.
    """
    if tokens <= 0:
        return Passages(list(texts), np.arange(len(texts), dtype=np.int64))
    if not 0 <= stride < tokens:
        raise InputError(f"data.passage_stride={stride}: expected 0 <= stride < passage_tokens ({tokens})")
    step = tokens - stride
    out: list[str] = []
    owner: list[int] = []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    for i, (text, offsets) in enumerate(zip(texts, enc["offset_mapping"])):
        n = len(offsets)
        if n <= tokens:
            out.append(text)
            owner.append(i)
            continue
        for start in range(0, n - stride, step):
            end = min(start + tokens, n)
            out.append(text[offsets[start][0] : offsets[end - 1][1]])
            owner.append(i)
            if end == n:
                break
    return Passages(out, np.asarray(owner, dtype=np.int64))
