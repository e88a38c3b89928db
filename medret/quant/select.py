"""Which modules a quant config touches, and with which spec and group size each."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

import torch
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError


def select_linears(model: nn.Module, cfg: QuantConfig) -> list[str]:
    """The nn.Linear names quant.include picks and quant.exclude leaves; a pattern matching none is an error."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for pattern in [*cfg.include, *cfg.overrides]:
        if not fnmatch.filter(names, pattern):
            raise InputError(
                f"quant pattern {pattern!r} matches no nn.Linear module of this {architecture(model)} model "
                f"(modules look like {names[0] if names else 'none'!r})"
            )
    return [
        n
        for n in names
        if any(fnmatch.fnmatch(n, p) for p in cfg.include) and not any(fnmatch.fnmatch(n, p) for p in cfg.exclude)
    ]


def architecture(model: nn.Module) -> str:
    """The model's type as its config names it (bert, modernbert, ...), for error lines."""
    return str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)


def spec_for(name: str, cfg: QuantConfig) -> QuantConfig:
    """The top-level spec with every override whose pattern matches ``name`` applied, in order."""
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
    if spec.granularity == "rows":  # group_size whole rows share one group
        if weight.shape[0] % spec.group_size:
            raise InputError(
                f"quant.group_size={spec.group_size} (rows per group) does not divide the {weight.shape[0]} rows "
                f"of {name}"
            )
        return weight.shape[1] * spec.group_size
    if weight.shape[1] % spec.group_size:
        raise InputError(
            f"quant.group_size={spec.group_size} does not divide layer {name} (in_features={weight.shape[1]})"
        )
    return spec.group_size
