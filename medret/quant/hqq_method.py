"""Half-quadratic quantization (HQQ, Badri & Shaji 2023) through the ``hqq`` package: calibration-free,
it fits each group's scale and zero of a uniform asymmetric grid by a proximal (half-quadratic) solver
instead of min/max. The package runs on CPU; its codes, scales and zeros are stored as medret's uniform
asymmetric QuantState (codes 0..2**bits-1, scale, offset = -zero * scale), so the rest is unchanged.
Registered as the rounding method ``quant.method=hqq``.
"""

from __future__ import annotations

import torch

from medret.errors import InputError
from medret.quant.registry import Method, register_method
from medret.quant.state import QuantState, make_state

# hqq's Quantizer.SUPPORTED_BITS within medret's 2..8 (7 is not among them)
BITS = (2, 3, 4, 5, 6, 8)


def quantize(weight: torch.Tensor, spec, group_size: int, importance: torch.Tensor | None = None) -> QuantState:
    """HQQ of ``weight`` in row-major groups of ``group_size`` (hqq's axis=1 groups are medret's)."""
    from hqq.core.quantize import Quantizer  # imported on use: the package is only needed by method=hqq

    w = weight.float()
    codes, meta = Quantizer.quantize(
        w,
        nbits=spec.bits,
        group_size=group_size,
        optimize=True,
        axis=1,
        bitpack=False,
        compute_dtype=torch.float32,
        device=str(w.device),
    )
    # hqq decodes (code - zero) * scale; medret decodes code * scale + offset, both in fp16 storage
    scale = meta["scale"].reshape(-1).to(torch.float16).float()
    offset = -meta["zero"].reshape(-1) * scale
    levels = torch.arange(2**spec.bits, dtype=torch.float32)
    q = codes.reshape(-1, group_size).round().to(torch.uint8)
    return make_state(weight, spec.bits, group_size, q, levels[None], scale, offset)


def check(cfg) -> None:
    if cfg.name != "uniform" or cfg.symmetric:
        raise InputError(
            f"quant.method=hqq: fits a uniform asymmetric grid (a scale and a zero per group); set "
            f"quant=uniform quant.symmetric=false, not quant={cfg.name} symmetric={cfg.symmetric}"
        )
    if cfg.bits not in BITS:
        raise InputError(f"quant.bits={cfg.bits}: method hqq supports {', '.join(map(str, BITS))}")


register_method(Method("hqq", fit=quantize, check=check))
