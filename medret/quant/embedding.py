"""The word-embedding table quantized with the run's scheme (``quant.embeddings=true``).

Custom schemes store it as a QuantState with row-wise groups (a group never spans two rows), and a
lookup decodes only the rows it gathers. bitsandbytes schemes use bitsandbytes' own 8-bit and 4-bit
embedding modules.
"""

from __future__ import annotations

import torch
from torch import nn

from medret.quant.linear import PackedModule
from medret.quant.packing import _BYTE_BITS
from medret.quant.state import QuantState


def word_embeddings(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(module name, module) of the token embedding table: what ``get_input_embeddings`` returns."""
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    for name, mod in model.named_modules():
        if mod is emb:
            return name, mod
    return None


def decode_rows(state: QuantState, rows: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantize only ``rows`` of a [num, dim] QuantState: the bytes of those rows' codes, their
    groups' codebooks and scales, and the outliers that fall in them."""
    num, dim = state.shape
    gpr = dim // state.group_size  # groups per row
    per_row = dim // 8  # code bytes per row in each bit plane (dim is a multiple of 8)
    idx = (rows[:, None] * per_row + torch.arange(per_row, device=rows.device)).reshape(-1)
    lut = _BYTE_BITS.to(state.planes.device)
    codes = lut[state.planes[0, idx].long()].reshape(len(rows), dim).long()
    for j in range(1, state.bits):
        codes |= lut[state.planes[j, idx].long()].reshape(len(rows), dim).long() << j
    groups = (rows[:, None] * gpr + torch.arange(gpr, device=rows.device)).reshape(-1)
    codes = codes.view(-1, state.group_size)
    cb = state.codebook.to(dtype)
    vals = cb[0][codes] if cb.shape[0] == 1 else torch.gather(cb[groups], 1, codes)
    if state.scale is not None:
        vals = vals * state.scale.to(dtype)[groups, None]
    if state.offset is not None:
        vals = vals + state.offset.to(dtype)[groups, None]
    out = vals.view(len(rows), dim)
    if state.outlier_idx is not None:
        o_row = state.outlier_idx.long() // dim
        hit = torch.isin(o_row, rows)
        if hit.any():
            where = torch.searchsorted(rows, o_row[hit])  # rows are sorted (torch.unique)
            out = out.clone()
            out[where, state.outlier_idx.long()[hit] % dim] = state.outlier_val[hit].to(dtype)
    return out


class QuantEmbedding(PackedModule):
    """Holds a QuantState of an embedding table as buffers; ``forward`` decodes the looked-up rows only."""

    def __init__(self, num: int, dim: int, bits: int, group_size: int, padding_idx: int | None = None):
        super().__init__((num, dim), bits, group_size)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num, dim, padding_idx

    @classmethod
    def from_state(cls, state: QuantState, padding_idx: int | None = None) -> QuantEmbedding:
        mod = cls(state.shape[0], state.shape[1], state.bits, state.group_size, padding_idx)
        mod.load_state(state)
        return mod

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        return decode_rows(self.state(), uniq)[inverse]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group={self.group_size}"


def bnb_embedding(emb: nn.Embedding, scheme: str, device: torch.device) -> nn.Module:
    """bitsandbytes' own embedding modules; the move to a device is what quantizes them."""
    import bitsandbytes as bnb

    kinds = {"bnb_int8": bnb.nn.Embedding8bit, "bnb_nf4": bnb.nn.EmbeddingNF4, "bnb_fp4": bnb.nn.EmbeddingFP4}
    new = kinds[scheme](emb.num_embeddings, emb.embedding_dim)
    new.load_state_dict({"weight": emb.weight.detach().float().cpu()})
    return new.to(device)
