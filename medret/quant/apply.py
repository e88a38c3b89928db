"""Quantize a retriever's encoders in place: pick modules, quantize each, report size and error."""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import replace
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant import companding, kmeans, normal_float, outliers, power_of_two, uniform
from medret.quant.bnb import BNB_DEVICES, BNB_SCHEMES, dequantized_weight, probe_compute_dtype, replace_linear
from medret.quant.calibration import squared_gradients
from medret.quant.linear import QuantLinear
from medret.quant.state import QuantState, dequantize

log = logging.getLogger(__name__)

CUSTOM = ("uniform", "kmeans", "nf", "log", "companding", "fisher_kmeans", "outliers")
CASTS = {"fp16": torch.float16, "bf16": torch.bfloat16}
SCHEMES = ("none", *CASTS, *BNB_SCHEMES, *CUSTOM)


def as_config(cfg: Any) -> QuantConfig:
    if isinstance(cfg, QuantConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantConfig), cfg))


def validate(cfg: QuantConfig, device: str = "auto") -> None:
    """Config errors that need no model: raised before anything is loaded."""
    if cfg.name not in SCHEMES:
        raise InputError(f"quant.name={cfg.name!r}: unknown scheme; expected one of {', '.join(SCHEMES)}")
    if cfg.name in CUSTOM:
        if cfg.bits is None or not 2 <= cfg.bits <= 8:
            raise InputError(f"quant.bits={cfg.bits}: scheme {cfg.name} needs an integer width in 2..8")
        if cfg.granularity not in ("tensor", "channel", "group"):
            raise InputError(f"quant.granularity={cfg.granularity!r}: expected tensor, channel or group")
        if cfg.granularity == "group" and cfg.group_size < 2:
            raise InputError(f"quant.group_size={cfg.group_size}: expected at least 2")
        if not 0.0 <= cfg.outlier_fraction < 0.5:
            raise InputError(f"quant.outlier_fraction={cfg.outlier_fraction}: expected 0 <= fraction < 0.5")
        if cfg.name == "outliers" and (cfg.base not in CUSTOM or cfg.base in ("outliers",)):
            raise InputError(
                f"quant.base={cfg.base!r}: outliers needs a custom base scheme "
                f"({', '.join(c for c in CUSTOM if c != 'outliers')})"
            )
    if cfg.name in BNB_SCHEMES:
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
        if dev not in BNB_DEVICES:
            raise InputError(
                f"quant.name={cfg.name}: bitsandbytes cannot run on device {dev!r} "
                f"(supported: {', '.join(BNB_DEVICES)})"
            )
        if cfg.compute_dtype not in ("float32", "float16", "bfloat16"):
            raise InputError(f"quant.compute_dtype={cfg.compute_dtype!r}: expected float32, float16 or bfloat16")
    if cfg.save_dir and cfg.name not in (*CUSTOM,):
        raise InputError(f"quant.save_dir: only the custom schemes ({', '.join(CUSTOM)}) are saved, not {cfg.name}")
    for pattern, spec in cfg.overrides.items():
        if not isinstance(spec, dict) or not set(spec) <= set(QuantConfig.__dataclass_fields__):
            raise InputError(f"quant.overrides[{pattern!r}]: expected a mapping of quant options, got {spec!r}")
        validate(replace(cfg, **spec, overrides={}), device)


def select_linears(model: nn.Module, cfg: QuantConfig) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for pattern in [*cfg.include, *cfg.overrides]:
        if not fnmatch.filter(names, pattern):
            raise InputError(
                f"quant pattern {pattern!r} matches no nn.Linear module "
                f"(modules look like {names[0] if names else 'none'!r})"
            )
    return [
        n
        for n in names
        if any(fnmatch.fnmatch(n, p) for p in cfg.include) and not any(fnmatch.fnmatch(n, p) for p in cfg.exclude)
    ]


def spec_for(name: str, cfg: QuantConfig) -> QuantConfig:
    spec = replace(cfg, overrides={})
    for pattern, over in cfg.overrides.items():
        if fnmatch.fnmatch(name, pattern):
            spec = replace(spec, **over)
    return spec


def group_size_for(weight: torch.Tensor, spec: QuantConfig, name: str) -> int:
    if spec.granularity == "tensor":
        return weight.numel()
    if spec.granularity == "channel":
        return weight.shape[1]
    if weight.shape[1] % spec.group_size:
        raise InputError(
            f"quant.group_size={spec.group_size} does not divide layer {name} (in_features={weight.shape[1]})"
        )
    return spec.group_size


def quantize_weight(
    weight: torch.Tensor, spec: QuantConfig, group_size: int, importance: torch.Tensor | None = None
) -> QuantState:
    """The custom schemes: one pure function per scheme, plus the optional dense-and-sparse split."""
    scheme = spec.base if spec.name == "outliers" else spec.name
    dense, idx, val = outliers.split(weight.float(), spec.outlier_fraction)
    if scheme == "uniform":
        state = uniform.quantize(dense, spec.bits, group_size, spec.symmetric)
    elif scheme == "nf":
        state = normal_float.quantize(dense, spec.bits, group_size)
    elif scheme == "log":
        state = power_of_two.quantize(dense, spec.bits, group_size)
    elif scheme == "companding":
        state = companding.quantize(dense, spec.bits, group_size, spec.mu)
    else:  # kmeans, fisher_kmeans
        imp = importance if scheme == "fisher_kmeans" else None
        if imp is not None and idx.numel():
            imp = imp.reshape(-1).index_fill(0, idx.long(), 0.0).view_as(weight)
        state = kmeans.quantize(dense, spec.bits, group_size, imp, spec.kmeans_iters)
    return outliers.attach(state, idx, val)


def error_stats(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    err = (w.float() - w_hat.float()).pow(2).sum().item()
    sig = w.float().pow(2).sum().item()
    return {"mse": err / w.numel(), "sqnr_db": 10 * math.log10(sig / err) if err > 0 else float("inf")}


def quantize_model(
    model: nn.Module, tokenizer, cfg: QuantConfig, calibration: list[str] | None, pooling: str, max_length: int
) -> dict[str, Any]:
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    names = select_linears(model, cfg)
    specs = {n: spec_for(n, cfg) for n in names}
    names = [n for n in names if specs[n].name != "none"]
    importance: dict[str, torch.Tensor] = {}
    need_fisher = [n for n in names if "fisher_kmeans" in (specs[n].name, specs[n].base)]
    if need_fisher:
        if not calibration:
            raise InputError("quant=fisher_kmeans: no calibration texts (the corpus is empty)")
        importance = squared_gradients(model, tokenizer, calibration, need_fisher, pooling, max_length)
    layers = []
    compute_dtype = None
    for name in names:
        spec, lin = specs[name], modules[name]
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        w = lin.weight.detach()
        if spec.name in BNB_SCHEMES:
            new = replace_linear(lin, spec.name, spec, device)
            if spec.name != "bnb_int8" and compute_dtype is None:
                compute_dtype = probe_compute_dtype(new, w)
            nbits = sum(
                t.numel() * t.element_size() * 8 for t in new.state_dict().values() if isinstance(t, torch.Tensor)
            ) - (0 if lin.bias is None else lin.bias.numel() * 32)
            layers.append(
                {
                    "name": name,
                    "scheme": spec.name,
                    "bits": 8 if spec.name == "bnb_int8" else 4,
                    "effective_bits": nbits / w.numel(),
                    "params": w.numel(),
                    **error_stats(w.cpu(), dequantized_weight(new)),
                }
            )
        else:
            gs = group_size_for(w, spec, name)
            state = quantize_weight(w.cpu(), spec, gs, importance.get(name, None) if importance else None)
            w_hat = dequantize(state)
            new = QuantLinear.from_state(state, lin.bias).to(device)
            layers.append(
                {
                    "name": name,
                    "scheme": spec.name,
                    "bits": spec.bits,
                    "group_size": gs,
                    "effective_bits": state.effective_bits(),
                    "params": w.numel(),
                    **error_stats(w.cpu(), w_hat),
                }
            )
        setattr(parent, attr, new)
    total_params = sum(x["params"] for x in layers)
    return {
        "layers": layers,
        "quantized_params": total_params,
        "effective_bits_per_param": (
            sum(x["effective_bits"] * x["params"] for x in layers) / total_params if total_params else None
        ),
        "bnb_4bit_compute_dtype_ran": compute_dtype,
    }


def state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
