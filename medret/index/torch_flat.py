"""Exact search on a GPU without faiss-gpu: chunked torch matmul + topk."""

from __future__ import annotations

import numpy as np
import torch


def torch_cuda_available() -> bool:
    return torch.cuda.is_available()


class TorchFlatIndex:
    def __init__(self, dim: int, device: str = "cuda", chunk: int = 262_144):
        self.dim, self.device, self.chunk = dim, torch.device(device), chunk
        self._parts: list[torch.Tensor] = []

    @property
    def ntotal(self) -> int:
        return sum(p.shape[0] for p in self._parts)

    @property
    def nbytes(self) -> int:
        return self.ntotal * self.dim * 4

    def add(self, x: np.ndarray) -> None:
        self._parts.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))

    @torch.inference_mode()
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32)).to(self.device)
        best_s = torch.full((len(qt), 0), -torch.inf, device=self.device)
        best_i = torch.zeros((len(qt), 0), dtype=torch.int64, device=self.device)
        offset = 0
        for part in self._parts:
            for s in range(0, part.shape[0], self.chunk):
                block = part[s : s + self.chunk]
                sc = qt @ block.T
                ids = torch.arange(offset + s, offset + s + block.shape[0], device=self.device).expand_as(sc)
                cat_s, cat_i = torch.cat([best_s, sc], 1), torch.cat([best_i, ids], 1)
                best_s, top = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
                best_i = torch.gather(cat_i, 1, top)
            offset += part.shape[0]
        return best_s.cpu().numpy(), best_i.cpu().numpy()
