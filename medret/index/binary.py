"""Binary index: sign bits searched by Hamming distance, candidates rescored with the float vectors."""

from __future__ import annotations

import faiss
import numpy as np


class BinaryRescoreIndex:
    def __init__(self, dim: int, multiplier: int):
        if dim % 8:
            raise ValueError(f"binary index needs a dim divisible by 8, got {dim}")
        self.dim, self.multiplier = dim, multiplier
        self.codes = faiss.IndexBinaryFlat(dim)
        self._floats: list[np.ndarray] = []
        self._stacked: np.ndarray | None = None

    @property
    def ntotal(self) -> int:
        return int(self.codes.ntotal)

    @property
    def nbytes(self) -> int:
        return self.ntotal * self.dim // 8 + sum(f.nbytes for f in self._floats)

    def add(self, x: np.ndarray) -> None:
        self.codes.add(np.packbits(x > 0, axis=1))
        self._floats.append(np.asarray(x, dtype=np.float32))
        self._stacked = None

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._stacked is None:
            self._stacked = np.concatenate(self._floats) if len(self._floats) != 1 else self._floats[0]
            self._floats = [self._stacked]
        cand_k = min(self.ntotal, k * self.multiplier)
        _, cand = self.codes.search(np.packbits(q > 0, axis=1), cand_k)
        scores = np.empty(cand.shape, dtype=np.float32)
        for s in range(0, len(q), 64):  # bounded gather; batched matmul rather than einsum
            rows = self._stacked[np.maximum(cand[s : s + 64], 0)]
            scores[s : s + 64] = (rows @ q[s : s + 64, :, None])[..., 0]
        scores[cand < 0] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, 1).astype(np.float32), np.take_along_axis(cand, top, 1)
