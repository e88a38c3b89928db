"""Bit-plane packing of k-bit codes: exactly k bits per weight for any k in 1..8, on any device."""

from __future__ import annotations

import torch

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [n] -> uint8 planes [bits, ceil(n / 8)]; plane j holds bit j of every code."""
    flat = codes.reshape(-1).to(torch.uint8)
    n = flat.numel()
    pad = (-n) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = _SHIFTS.to(flat.device)
    planes = []
    for j in range(bits):
        bit = (flat >> j) & 1
        planes.append((bit.view(-1, 8) << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8))
    return torch.stack(planes)


def unpack_codes(planes: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: int64 codes [n]."""
    shifts = _SHIFTS.to(planes.device)
    codes = torch.zeros(planes.shape[1] * 8, dtype=torch.int64, device=planes.device)
    for j in range(bits):
        bit = (planes[j].unsqueeze(1) >> shifts) & 1
        codes |= bit.reshape(-1).to(torch.int64) << j
    return codes[:n]
