"""QuantLinear: holds a QuantState's packed tensors as buffers and decodes the weight in forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medret.quant.state import QuantState, dequantize


class PackedModule(nn.Module):
    """A QuantState's packed tensors held as buffers (saved, moved, loaded with the model)."""

    shape: tuple[int, int]

    def __init__(self, shape: tuple[int, int], bits: int, group_size: int):
        super().__init__()
        self.shape, self.bits, self.group_size = shape, bits, group_size
        for name in QuantState.TENSORS:
            self.register_buffer(name, None)

    def load_state(self, state: QuantState) -> None:
        for name in QuantState.TENSORS:
            setattr(self, name, getattr(state, name))

    def allocate(self, present: dict[str, list[int]], dtypes: dict[str, str]) -> None:
        """Empty buffers of the saved shapes, so a saved state_dict loads without re-quantizing."""
        for name, shape in present.items():
            setattr(self, name, torch.empty(shape, dtype=getattr(torch, dtypes[name])))

    def state(self) -> QuantState:
        return QuantState(self.shape, self.bits, self.group_size, **{n: getattr(self, n) for n in QuantState.TENSORS})


class QuantLinear(PackedModule):
    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool):
        super().__init__((out_features, in_features), bits, group_size)
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_state(cls, state: QuantState, bias: torch.Tensor | None) -> QuantLinear:
        out_f, in_f = state.shape
        mod = cls(in_f, out_f, state.bits, state.group_size, bias is not None)
        mod.load_state(state)
        if bias is not None:
            mod.bias.data = bias.detach().float().clone()
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(self.state(), x.dtype if x.is_floating_point() else torch.float32)
        return F.linear(x, w, None if self.bias is None else self.bias.to(w.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}"
