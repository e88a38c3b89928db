"""Dense-and-sparse split: the largest-magnitude fraction of weights stays in fp16, the rest is quantized."""

from __future__ import annotations

import torch

from medret.quant.state import QuantState


def split(weight: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense weight with outliers zeroed, flat int32 indices, fp16 values)."""
    n = int(round(fraction * weight.numel()))
    flat = weight.reshape(-1)
    if n == 0:
        return weight, torch.empty(0, dtype=torch.int32), torch.empty(0, dtype=torch.float16)
    idx = flat.abs().topk(n).indices.sort().values
    dense = flat.clone()
    dense[idx] = 0.0
    return dense.view_as(weight), idx.to(torch.int32), flat[idx].to(torch.float16)


def attach(state: QuantState, idx: torch.Tensor, val: torch.Tensor) -> QuantState:
    if idx.numel():
        state.outlier_idx, state.outlier_val = idx, val
    return state
