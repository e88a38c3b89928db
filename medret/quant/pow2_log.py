"""``quant=log``: logarithmic levels 0 and +-2^-k (powers of two), dense near zero where most weights are."""

from __future__ import annotations

import torch

from medret.quant.registry import Scheme, register
from medret.quant.state import QuantState, dequantize, quantize_scaled_levels


def levels(bits: int) -> torch.Tensor:
    n = 2 ** (bits - 1)  # n positive levels, n - 1 negative ones and zero: 2**bits in all
    pos = [2.0 ** (-k) for k in range(n)]
    return torch.tensor(sorted([*(-p for p in pos[: n - 1]), 0.0, *pos]), dtype=torch.float32)


def quantize(weight: torch.Tensor, bits: int, group_size: int) -> QuantState:
    return quantize_scaled_levels(weight, levels(bits), bits, group_size)


register(Scheme("log", "custom", lambda w, spec, gs, imp: quantize(w, spec.bits, gs)))

__all__ = ["levels", "quantize", "dequantize"]
