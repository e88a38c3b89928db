"""RuntimeEncoder: TextEncoder's interface over an ONNX Runtime session or an OpenVINO compiled model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

# a backend maps int64 feeds {input name: [batch, seq]} to float32 embeddings [batch, dim]
Run = Callable[[dict[str, np.ndarray]], np.ndarray]


def tokenize(tokenizer: Any, texts: list[str], prefix: str, max_length: int) -> dict[str, list[list[int]]]:
    return tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length)


def length_order(enc: dict[str, list[list[int]]]) -> np.ndarray:
    """Longest first, stable: as TextEncoder.encode, so padding is wasted only within similar lengths."""
    lengths = np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(enc["input_ids"]))
    return np.argsort(-lengths, kind="stable")


def padded_batches(
    tokenizer: Any, enc: dict[str, list[list[int]]], order: np.ndarray, batch_size: int, names: tuple[str, ...]
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(indices, int64 feeds) per batch; token_type_ids made as zeros when the graph takes them but the
    tokenizer did not produce them."""
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc and k in names]
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = tokenizer.pad([{k: enc[k][i] for k in keys} for i in idx], return_tensors="np")
        feeds = {k: np.ascontiguousarray(batch[k], dtype=np.int64) for k in keys}
        for n in names:
            feeds.setdefault(n, np.zeros_like(feeds["input_ids"]))
        yield idx, feeds


class RuntimeEncoder:
    """Encodes like TextEncoder (same tokenizer, prefix, truncation, length-sorted batches), but the
    transformer, pooling and normalisation run inside an exported graph."""

    def __init__(
        self,
        run: Run,
        input_names: tuple[str, ...],
        tokenizer: Any,
        settings: Any,
        dim: int,
        device: torch.device,
        files: list[Path],
        path: str = "",
    ):
        self.run, self.input_names = run, tuple(input_names)
        self.tokenizer, self.settings = tokenizer, settings
        self._dim, self.device = dim, device
        self.files, self.path = files, path
        self.autocast = None  # the graph's precision is fixed at export

    @property
    def dim(self) -> int:
        return self._dim

    def param_bytes(self) -> int:
        """Bytes of the deployed model files (what a deployment ships)."""
        return sum(f.stat().st_size for f in self.files)

    def with_settings(self, settings: Any) -> RuntimeEncoder:
        """Same session, other prefix/max length (a symmetric model's query side)."""
        other = copy.copy(self)
        other.settings = settings
        return other

    def encode(self, texts: list[str], batch_size: int, desc: str = "encode") -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        enc = tokenize(self.tokenizer, texts, self.settings.prefix, self.settings.max_length)
        order = length_order(enc)
        with tqdm(total=len(texts), desc=desc, unit="text", mininterval=2.0, leave=False) as bar:
            for idx, feeds in padded_batches(self.tokenizer, enc, order, batch_size, self.input_names):
                out[idx] = self.run(feeds)
                bar.update(len(idx))
        return out
