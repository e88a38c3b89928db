"""Fake quantization for quantization-aware training: the forward pass sees the quantized weight,
the backward pass the latent fp32 one (straight-through estimator). Scales and codebooks are refit
from the current weights on every forward, as each scheme defines them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant.layers import quantize_weight
from medret.quant.options import as_config, module_specs
from medret.quant.registry import names, scheme
from medret.quant.select import group_size_for, select_linears, spec_for
from medret.quant.state import dequantize


class FakeQuantLinear(nn.Module):
    def __init__(self, linear: nn.Linear, spec: QuantConfig, group_size: int):
        super().__init__()
        self.linear, self.spec, self.group_size = linear, spec, group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.linear.weight
        with torch.no_grad():
            w_hat = dequantize(quantize_weight(w.detach().float(), self.spec, self.group_size)).to(w.dtype)
        w_ste = w + (w_hat - w).detach()
        return F.linear(x, w_ste, self.linear.bias)


def attach_fake_quant(model: nn.Module, cfg) -> int:
    cfg = as_config(cfg)
    trainable = [n for n in names("custom") if scheme(n).qat]
    used = {x for spec in module_specs(cfg) for x in (spec.name, spec.base) if x and x != "none"}
    if scheme(cfg.name).kind != "custom" or not used <= set(trainable):
        raise InputError(f"train=qat with quant={cfg.name}: QAT supports the custom schemes ({', '.join(trainable)})")
    n = 0
    for name in select_linears(model, cfg):
        spec = spec_for(name, cfg)
        if spec.name == "none":
            continue
        lin = model.get_submodule(name)
        model.set_submodule(name, FakeQuantLinear(lin, spec, group_size_for(lin.weight, spec, name)), strict=True)
        n += 1
    return n


def detach_fake_quant(model: nn.Module) -> None:
    """Back to plain nn.Linear holding the trained latent weights (then quantize for real)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, FakeQuantLinear):
            model.set_submodule(name, mod.linear, strict=True)
