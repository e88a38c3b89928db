"""QuantLinear: holds a QuantState's packed tensors as buffers and decodes the weight in forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medret.quant.state import QuantState, dequantize


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        for name in QuantState.TENSORS:
            self.register_buffer(name, None)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_state(cls, state: QuantState, bias: torch.Tensor | None) -> QuantLinear:
        out_f, in_f = state.shape
        mod = cls(in_f, out_f, state.bits, state.group_size, bias is not None)
        for name in QuantState.TENSORS:
            setattr(mod, name, getattr(state, name))
        if bias is not None:
            mod.bias.data = bias.detach().float().clone()
        return mod

    def allocate(self, present: dict[str, list[int]], dtypes: dict[str, str]) -> None:
        """Empty buffers of the saved shapes, so a saved state_dict loads without re-quantizing."""
        for name, shape in present.items():
            setattr(self, name, torch.empty(shape, dtype=getattr(torch, dtypes[name])))

    def state(self) -> QuantState:
        return QuantState(
            (self.out_features, self.in_features),
            self.bits,
            self.group_size,
            **{n: getattr(self, n) for n in QuantState.TENSORS},
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(self.state(), x.dtype if x.is_floating_point() else torch.float32)
        return F.linear(x, w, None if self.bias is None else self.bias.to(w.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}"
