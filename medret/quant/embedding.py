"""The word-embedding table quantized with the run's scheme (``quant.embeddings=true``).

Custom schemes store it as a QuantState (groups within a row, or whole rows under granularity rows / tensor),
and a lookup decodes only the rows it gathers; with frequency tiers (``quant.embedding_bits``) as one such state
per tier at its own width (``TieredEmbedding``). bitsandbytes schemes use bitsandbytes' own 8-bit and 4-bit
embedding modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medret.quant.linear import PackedModule
from medret.quant.packing import _BYTE_BITS, pack_codes, unpack_codes
from medret.quant.state import QuantState, dequantize


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
    unit = min(state.group_size, dim)  # columns of one group within a row (a group may span whole rows)
    gpr = dim // unit  # groups per row
    per_row = dim // 8  # code bytes per row in each bit plane (dim is a multiple of 8)
    idx = (rows[:, None] * per_row + torch.arange(per_row, device=rows.device)).reshape(-1)
    lut = _BYTE_BITS.to(state.planes.device)
    codes = lut[state.planes[0, idx].long()].reshape(len(rows), dim).long()
    for j in range(1, state.bits):
        codes |= lut[state.planes[j, idx].long()].reshape(len(rows), dim).long() << j
    if state.group_size <= dim:
        groups = (rows[:, None] * gpr + torch.arange(gpr, device=rows.device)).reshape(-1)
    else:  # rows / tensor granularity: consecutive rows share a group
        groups = rows // (state.group_size // dim)
    codes = codes.view(-1, unit)
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


def index_bits(tiers: int) -> int:
    """Bits per row of the row -> tier map: none for one tier."""
    return max(0, math.ceil(math.log2(tiers))) if tiers > 1 else 0


class TieredEmbedding(nn.Module):
    """A word-embedding table whose rows are split into tiers, each tier one packed QuantState of its rows at
    its own width (``medret.quant.embedding_tiers`` decides which rows go where). A packed row -> tier map of
    ``index_bits`` bits per row is stored with them; a row's place inside its tier (its rank among the tier's
    rows) is derived from the map, not stored. A lookup decodes only the rows it gathers."""

    def __init__(self, num: int, dim: int, tiers: list[dict], padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num, dim, padding_idx
        self.tiers = [
            {"bits": int(t["bits"]), "group_size": int(t["group_size"]), "rows": int(t["rows"])} for t in tiers
        ]
        self.index_bits = index_bits(len(tiers))
        self.register_buffer("tier_map", None)
        for i in range(len(tiers)):
            for name in QuantState.TENSORS:
                self.register_buffer(f"t{i}_{name}", None)
        self._where: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_states(
        cls, tier: torch.Tensor, states: list[QuantState | None], specs: list[dict], padding_idx: int | None = None
    ) -> TieredEmbedding:
        """``tier``: each row's tier [num]; ``states[i]``: tier i's rows (in row order) quantized, None if empty."""
        dim = next(s.shape[1] for s in states if s is not None)
        mod = cls(len(tier), dim, specs, padding_idx)
        if mod.index_bits:
            mod.tier_map = pack_codes(tier, mod.index_bits)
        for i, state in enumerate(states):
            if state is not None:
                for name in QuantState.TENSORS:
                    setattr(mod, f"t{i}_{name}", getattr(state, name))
        return mod

    def _apply(self, fn, recurse=True):  # a move drops the derived row places; they are rebuilt where the map is
        self._where = None
        return super()._apply(fn, recurse)

    def where(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tier, place inside the tier) of every row."""
        if self._where is None:
            device = self.t_device()
            if self.index_bits:
                tier = unpack_codes(self.tier_map, self.index_bits, self.num_embeddings).to(device)
            else:
                tier = torch.zeros(self.num_embeddings, dtype=torch.long, device=device)
            order = torch.argsort(tier, stable=True)
            sizes = torch.bincount(tier, minlength=len(self.tiers))
            starts = torch.cumsum(sizes, 0) - sizes
            place = torch.empty_like(tier)
            place[order] = torch.arange(len(tier), device=device) - starts[tier[order]]
            self._where = (tier, place)
        return self._where

    def t_device(self) -> torch.device:
        return next(b.device for b in self.buffers())

    def tier_state(self, i: int) -> QuantState | None:
        t = self.tiers[i]
        if not t["rows"]:
            return None
        tensors = {n: getattr(self, f"t{i}_{n}") for n in QuantState.TENSORS}
        return QuantState((t["rows"], self.embedding_dim), t["bits"], t["group_size"], **tensors)

    def storage_bits(self) -> int:
        """Every stored bit: each tier's codes, codebooks and scales, and the row -> tier map."""
        return sum(b.numel() * b.element_size() * 8 for b in self.buffers())

    def effective_bits(self) -> float:
        return self.storage_bits() / (self.num_embeddings * self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
        tier, place = self.where()
        t, p = tier[uniq], place[uniq]
        out = torch.empty(len(uniq), self.embedding_dim, device=uniq.device)
        for i in range(len(self.tiers)):
            hit = t == i
            if hit.any():  # places rise with the row id inside a tier: sorted, as decode_rows needs
                out[hit] = decode_rows(self.tier_state(i), p[hit])
        return out[inverse]

    def dense(self) -> nn.Embedding:
        """A plain fp32 nn.Embedding of the decoded table (decode-once)."""
        tier, _ = self.where()
        weight = torch.empty(self.num_embeddings, self.embedding_dim, device=tier.device)
        for i in range(len(self.tiers)):
            state = self.tier_state(i)
            if state is not None:
                weight[tier == i] = dequantize(state)
        emb = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx)
        emb.weight.data = weight
        return emb.requires_grad_(False)

    def manifest_entry(self) -> dict:
        """What a saved folder's manifest needs to rebuild this module before its tensors load."""
        present = {n: b for n, b in self.named_buffers(recurse=False) if b is not None}
        return {
            "kind": "tiered_embedding",
            "num": self.num_embeddings,
            "dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
            "tiers": self.tiers,
            "tensors": {n: list(b.shape) for n, b in present.items()},
            "dtypes": {n: str(b.dtype).removeprefix("torch.") for n, b in present.items()},
        }

    @classmethod
    def from_manifest(cls, entry: dict) -> TieredEmbedding:
        """Empty buffers of the saved shapes, so a saved state_dict loads without quantizing again."""
        mod = cls(entry["num"], entry["dim"], entry["tiers"], entry["padding_idx"])
        for name, shape in entry["tensors"].items():
            setattr(mod, name, torch.empty(shape, dtype=getattr(torch, entry["dtypes"][name])))
        return mod

    def extra_repr(self) -> str:
        tiers = ", ".join(f"{t['rows']} rows @ {t['bits']} bits" for t in self.tiers)
        return f"{self.num_embeddings}, {self.embedding_dim}, tiers=[{tiers}], map={self.index_bits} bits/row"
