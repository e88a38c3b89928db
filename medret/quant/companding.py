"""mu-law companding: uniform levels in the compressed domain, expanded back (denser near zero)."""

from __future__ import annotations

import torch

from medret.quant.registry import Scheme, register
from medret.quant.state import QuantState, dequantize, quantize_scaled_levels


def levels(bits: int, mu: float = 255.0) -> torch.Tensor:
    u = torch.linspace(-1.0, 1.0, 2**bits, dtype=torch.float64)
    return (torch.sign(u) * ((1 + mu) ** u.abs() - 1) / mu).float()


def quantize(weight: torch.Tensor, bits: int, group_size: int, mu: float = 255.0) -> QuantState:
    return quantize_scaled_levels(weight, levels(bits, mu), bits, group_size)


register(Scheme("companding", "custom", lambda w, spec, gs, imp: quantize(w, spec.bits, gs, spec.mu), options=("mu",)))

__all__ = ["levels", "quantize", "dequantize"]
