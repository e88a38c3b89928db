"""Uniform round-to-nearest quantization: symmetric (absmax) or asymmetric (min/max)."""

from __future__ import annotations

import torch

from medret.quant.registry import Scheme, register
from medret.quant.state import QuantState, dequantize, groups_of, make_state


def quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool = True) -> QuantState:
    g = groups_of(weight.float(), group_size)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (g.abs().amax(dim=1) / qmax).clamp(min=1e-12).to(torch.float16).float()
        q = torch.clamp(torch.round(g / scale[:, None]), -qmax - 1, qmax)
        levels = torch.arange(-(qmax + 1), qmax + 1, dtype=torch.float32)
        return make_state(weight, bits, group_size, (q + qmax + 1).to(torch.uint8), levels[None], scale)
    lo, hi = g.amin(dim=1), g.amax(dim=1)
    scale = ((hi - lo) / (2**bits - 1)).clamp(min=1e-12).to(torch.float16).float()
    lo = lo.to(torch.float16).float()
    q = torch.clamp(torch.round((g - lo[:, None]) / scale[:, None]), 0, 2**bits - 1)
    levels = torch.arange(2**bits, dtype=torch.float32)
    return make_state(weight, bits, group_size, q.to(torch.uint8), levels[None], scale, lo)


register(
    Scheme(
        "uniform", "custom", lambda w, spec, gs, imp: quantize(w, spec.bits, gs, spec.symmetric), options=("symmetric",)
    )
)

__all__ = ["quantize", "dequantize"]
