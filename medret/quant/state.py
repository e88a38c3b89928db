"""QuantState: what a quantized weight matrix stores, and the one dequantize that reads it.

weight[g, i] = codebook[c(g), code[g, i]] * scale[g] + offset[g]   (group g of ``group_size`` weights)
then the dense-and-sparse outliers, if any, overwrite their positions.
``codebook`` is shared ([1, 2**bits]) for fixed-level schemes, or one row per group for k-means.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from medret.quant.packing import pack_codes, unpack_codes


@dataclass
class QuantState:
    shape: tuple[int, int]
    bits: int
    group_size: int
    planes: torch.Tensor  # uint8 [bits, ceil(numel / 8)]
    codebook: torch.Tensor  # fp16 [1 or groups, 2**bits]
    scale: torch.Tensor | None = None  # fp16 [groups]
    offset: torch.Tensor | None = None  # fp16 [groups]
    outlier_idx: torch.Tensor | None = None  # int32 [n_outliers], flat positions
    outlier_val: torch.Tensor | None = None  # fp16 [n_outliers]

    TENSORS = ("planes", "codebook", "scale", "offset", "outlier_idx", "outlier_val")

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def storage_bits(self) -> int:
        """Every stored bit: codes, codebooks, scales, offsets and outliers (value + index)."""
        total = 0
        for f in fields(self):
            t = getattr(self, f.name)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size() * 8
        return total

    def effective_bits(self) -> float:
        return self.storage_bits() / self.numel


def groups_of(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] -> [groups, group_size], row-major: runs of one row (the blocks bitsandbytes uses when gs | in),
    or whole consecutive rows (gs a multiple of in; the whole matrix under tensor granularity)."""
    in_f = weight.shape[1]
    if weight.numel() % group_size or (in_f % group_size and group_size % in_f):
        raise ValueError(f"group size {group_size} does not divide a {tuple(weight.shape)} weight")
    return weight.reshape(-1, group_size)


def fitted_codebook(state: QuantState) -> bool:
    """Whether the codebook holds fitted values (k-means: per group, or one for the whole matrix) that refinement
    and distillation may tune, rather than a scheme's fixed levels that a scale stretches (nf, log, uniform)."""
    return state.codebook.shape[0] > 1 or state.scale is None


def nearest_level(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of sorted ``levels`` ([L] shared, or [G, L] per row of x)."""
    mid = (levels[..., 1:] + levels[..., :-1]) / 2
    if mid.dim() == 1:
        return torch.bucketize(x, mid)
    return torch.searchsorted(mid.contiguous(), x.contiguous())


def make_state(
    weight: torch.Tensor,
    bits: int,
    group_size: int,
    codes: torch.Tensor,
    codebook: torch.Tensor,
    scale: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
) -> QuantState:
    half = lambda t: None if t is None else t.to(torch.float16).contiguous()  # noqa: E731
    return QuantState(
        tuple(weight.shape), bits, group_size, pack_codes(codes, bits), half(codebook), half(scale), half(offset)
    )


def dequantize(state: QuantState, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n_groups = state.numel // state.group_size
    codes = unpack_codes(state.planes, state.bits, state.numel).view(n_groups, state.group_size)
    return decode(state, codes, dtype)


def decode(state: QuantState, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight from unpacked ``codes`` [groups, group_size] and the state's float tensors; differentiable in
    those tensors (refinement tunes scales, offsets and codebooks through it with the codes fixed)."""
    cb = state.codebook.to(dtype)
    vals = cb[0][codes] if cb.shape[0] == 1 else torch.gather(cb, 1, codes)
    if state.scale is not None:
        vals = vals * state.scale.to(dtype)[:, None]
    if state.offset is not None:
        vals = vals + state.offset.to(dtype)[:, None]
    flat = vals.reshape(-1)
    if state.outlier_idx is not None:
        flat = flat.index_copy(0, state.outlier_idx.long(), state.outlier_val.to(dtype))
    return flat.view(state.shape)


def quantize_scaled_levels(weight: torch.Tensor, levels: torch.Tensor, bits: int, group_size: int) -> QuantState:
    """Fixed levels in [-1, 1] scaled by each group's absmax (NF, log, mu-law): codebook shared."""
    g = groups_of(weight.float(), group_size)
    scale = g.abs().amax(dim=1).clamp(min=1e-12)
    scale16 = scale.to(torch.float16).float()  # quantize against the scale that is stored
    codes = nearest_level(g / scale16[:, None], levels.float())
    return make_state(weight, bits, group_size, codes, levels[None, :], scale16)
