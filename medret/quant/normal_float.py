"""Normal-float (NF) codebooks at any bit width: quantiles of N(0, 1), scaled to [-1, 1].

At 4 bits the levels equal bitsandbytes' NF4 (``create_normal_map``): 2**(b-1) positive quantiles,
2**(b-1) - 1 negative ones and an exact zero, with offset 1 - 1 / (2**(b+1) - 1).
"""

from __future__ import annotations

import torch
from scipy.stats import norm

from medret.quant.registry import Scheme, register
from medret.quant.state import QuantState, dequantize, quantize_scaled_levels


def levels(bits: int) -> torch.Tensor:
    offset = 1 - 1 / (2 ** (bits + 1) - 1)
    n_pos, n_neg = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    pos = norm.ppf(torch.linspace(offset, 0.5, n_pos + 1)[:-1].double().numpy())
    neg = -norm.ppf(torch.linspace(offset, 0.5, n_neg + 1)[:-1].double().numpy())
    v = torch.tensor(sorted([*pos.tolist(), 0.0, *neg.tolist()]), dtype=torch.float64)
    return (v / v.abs().max()).float()


def quantize(weight: torch.Tensor, bits: int, group_size: int) -> QuantState:
    return quantize_scaled_levels(weight, levels(bits), bits, group_size)


register(Scheme("nf", "custom", lambda w, spec, gs, imp: quantize(w, spec.bits, gs)))

__all__ = ["levels", "quantize", "dequantize"]
