"""The quant options resolved once into one plan: evaluate builds it before anything loads and passes it down."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from medret.config import QuantConfig
from medret.quant.checks import validate
from medret.quant.options import as_config, drop_unused_bits, needs_calibration, quant_identity
from medret.quant.registry import Method, Scheme, method, scheme


@dataclass(frozen=True)
class QuantPlan:
    """The run's quant options once resolved: checked, quant=auto turned into its per-layer config,
    unused fields dropped, identity computed. Built by ``plan_quant``; everything below reads it."""

    config: QuantConfig
    scheme: Scheme
    method: Method
    identity: dict[str, Any]  # quant_identity(config)
    needs_calibration: bool
    auto: dict[str, Any] | None = None  # quant=auto: what was chosen (results.json)

    @property
    def cache_key(self) -> dict[str, Any]:
        """The quant part of embedding cache keys (the unquantized model keeps its short one)."""
        return {"name": "none"} if self.config.name == "none" else self.identity


def plan_quant(cfg, device: str = "auto", auto: dict[str, Any] | None = None) -> QuantPlan:
    """Check the (concrete, already auto-resolved) options once and resolve everything derived from them."""
    if isinstance(cfg, QuantPlan):
        return cfg
    cfg = replace(as_config(cfg))  # a copy: dropping unused bits never changes the caller's config
    validate(cfg, device)
    drop_unused_bits(cfg)
    return QuantPlan(cfg, scheme(cfg.name), method(cfg.method), quant_identity(cfg), needs_calibration(cfg), auto)
