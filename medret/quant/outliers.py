"""Dense-and-sparse split: the largest-magnitude fraction of weights stays in fp16, the rest is quantized."""

from __future__ import annotations

import torch

from medret.errors import InputError
from medret.quant.registry import Scheme, names, register, scheme
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


def _check(spec) -> None:
    bases = [n for n in names("custom") if n != "outliers"]
    if spec.base not in bases:
        raise InputError(f"quant.base={spec.base!r}: outliers needs a custom base scheme ({', '.join(bases)})")


def _quantize(w: torch.Tensor, spec, group_size: int, importance: torch.Tensor | None) -> QuantState:
    """The base scheme on the dense part; the split itself is done for every custom scheme."""
    return scheme(spec.base).quantize(w, spec, group_size, importance)


# its state keeps exact outliers beside the grid: GPTQ has no grid of its own to round them to
register(Scheme("outliers", "custom", _quantize, check=_check, options=("base",), rounds_to_grid=False))
