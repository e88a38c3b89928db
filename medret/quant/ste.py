"""Training through a packed layer's own grid: the codes may move (train=distill).

A ``SteQuantLinear`` wraps a ``QuantLinear`` without changing it until ``write_back``. Its latent fp32 weight
(stored in level gaps of its group) starts at the layer's dequantized weight, so the first forward is exactly the
rounding it starts from (GPTQ's or round-to-nearest); every forward re-rounds it to the nearest level of its group.
The straight-through estimator passes the output gradient to the latent weight, and the decode passes it to the
stored floats (scales, offsets, per-group k-means codebooks, outlier values), as refinement fits them. A shared
fixed-level codebook (nf, log, uniform levels) stays fixed. The floats are rounded to fp16 in the forward (gradient
straight through), so training sees exactly what the packed layer will store: ``write_back`` is lossless.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medret.quant.linear import QuantLinear
from medret.quant.packing import pack_codes, unpack_codes
from medret.quant.state import QuantState, decode, dequantize, fitted_codebook, nearest_level

FLOATS = ("scale", "offset", "outlier_val")  # fitted when present; "codebook" too when k-means fitted it


def _level_gap(levels: torch.Tensor) -> torch.Tensor:
    """Each group's narrowest gap between distinct levels [groups] (a k-means codebook's far outlier level would
    make a mean gap many inner gaps wide); a group without two distinct levels takes the layer's median gap."""
    ordered = levels.sort(dim=1).values
    gaps = ordered[:, 1:] - ordered[:, :-1]
    gap = torch.where(gaps > 0, gaps, torch.inf).amin(dim=1)
    ok = torch.isfinite(gap) & (gap > 0)
    fill = gap[ok].median() if ok.any() else gap.new_tensor(1e-3)
    return torch.where(ok, gap, fill)


def _as_stored(p: torch.Tensor) -> torch.Tensor:
    """``p`` rounded to fp16 as the packed layer stores it, with the gradient of the identity."""
    return p + (p.detach().to(torch.float16).float() - p.detach())


class SteQuantLinear(nn.Module):
    def __init__(self, packed: QuantLinear):
        super().__init__()
        self.packed = packed
        st = packed.state()
        # the latent weight in level gaps of its group: one Adam lr moves every layer, at every width, by the same
        # share of its grid (weights start on their levels, so a code moves once half a gap has accumulated)
        self.register_buffer("unit", _level_gap(self.levels(st))[:, None])
        self.latent = nn.Parameter(dequantize(st).float().reshape(-1, st.group_size) / self.unit)
        tuned = {n: getattr(st, n) for n in FLOATS if getattr(st, n) is not None}
        if fitted_codebook(st):  # k-means: fitted levels (per group, or one for a whole matrix)
            tuned["codebook"] = st.codebook
        self.tuned = nn.ParameterDict({n: nn.Parameter(t.detach().float().clone()) for n, t in tuned.items()})

    def _state(self) -> QuantState:
        st = self.packed.state()
        parts = {n: getattr(st, n) for n in QuantState.TENSORS}
        parts.update({n: _as_stored(p) for n, p in self.tuned.items()})
        return QuantState(st.shape, st.bits, st.group_size, **parts)

    @staticmethod
    def levels(st: QuantState) -> torch.Tensor:
        """Every group's levels [groups, 2**bits], as decode computes them."""
        groups = st.numel // st.group_size
        lv = st.codebook.float().expand(groups, -1)
        if st.scale is not None:
            lv = lv * st.scale.float()[:, None]
        if st.offset is not None:
            lv = lv + st.offset.float()[:, None]
        return lv

    @torch.no_grad()
    def codes(self, st: QuantState | None = None) -> torch.Tensor:
        """The latent weight rounded to the nearest level of its group: codes [groups, group_size]."""
        st = self._state() if st is None else st
        ordered, order = self.levels(st).detach().sort(dim=1)  # a learned codebook may leave its sorted order
        idx = nearest_level((self.latent * self.unit).detach(), ordered)
        return order.gather(1, idx)

    def weight(self) -> torch.Tensor:
        st = self._state()
        w_hat = decode(st, self.codes(st))  # differentiable in the floats, codes fixed
        latent = (self.latent * self.unit).view(st.shape)
        return w_hat + (latent - latent.detach())  # straight through to the latent weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.packed.bias)  # the packed bias, trained in place

    @torch.no_grad()
    def write_back(self) -> tuple[QuantLinear, int]:
        """The packed layer holding the trained codes and floats; returns it and how many codes moved."""
        st = self._state()
        codes = self.codes(st)
        start = unpack_codes(self.packed.planes, st.bits, st.numel).view_as(codes)
        moved = int((codes != start).sum())
        for name, p in self.tuned.items():
            setattr(self.packed, name, p.detach().to(torch.float16).contiguous())
        self.packed.planes = pack_codes(codes, st.bits).to(self.packed.planes.device)
        return self.packed, moved


def wrap(model: nn.Module) -> list[nn.Parameter]:
    """Every QuantLinear of ``model`` trained through its grid; only the latent weights, their stored floats, the
    quantized layers' biases and the LayerNorms require grad (returned): the rest is frozen."""
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QuantLinear):
            ste = SteQuantLinear(mod)
            model.set_submodule(name, ste, strict=True)
            params += [ste.latent, *ste.tuned.values(), *([mod.bias] if mod.bias is not None else [])]
    params += [p for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def unwrap(model: nn.Module) -> dict[str, int]:
    """Back to packed QuantLinears holding the trained codes and floats; how many layers and codes, and how many
    codes moved from where they started."""
    out = {"layers": 0, "codes": 0, "codes_moved": 0}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, SteQuantLinear):
            packed, moved = mod.write_back()
            model.set_submodule(name, packed, strict=True)
            out["layers"] += 1
            out["codes"] += packed.state().numel
            out["codes_moved"] += moved
    model.requires_grad_(False)
    return out
