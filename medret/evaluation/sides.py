"""``quant.side``: quantize only the query or only the document encoder, as deployments often do (the query
encoder for latency, the document encoder for a cheap re-encode of a large corpus).

The other side runs the fp32 weights as loaded, so its embeddings are the fp32 baseline's: its cache key is the
fp32 run's (``run_key``, ``medret.cache.shards.side_parts``) and it reads what the baseline encoded. A symmetric
model gives the quantized side a copy of its own, so the other side keeps the fp32 weights.

Size rule: the deployed model is the quantized side's bytes plus the fp32 side's bytes (a symmetric model quantized
on one side deploys both copies); ``fp32_model_bytes`` stays the fp32 deployment's (one model when symmetric);
``effective_bits_per_param_all`` is every deployed bit over every deployed parameter, ``effective_bits_per_param``
stays over the quantized parameters.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from medret.cache.shards import side_parts
from medret.config import QuantConfig
from medret.errors import InputError
from medret.models import Retriever, TextEncoder
from medret.quant import QuantPlan, model_sizes, quantize_retriever, scheme, state_bytes
from medret.quant.sizes import param_count

log = logging.getLogger(__name__)

SIDES = ("both", "query", "doc")
OTHER = {"query": "doc", "doc": "query"}


def check_side(q: QuantConfig, adapter: str | None) -> None:
    """The side's value and the options that cannot go with one side; before any data or model loads."""
    if q.side not in SIDES:
        raise InputError(f"quant.side={q.side!r}: expected one of {', '.join(SIDES)} (which encoder is quantized)")
    over = [p for p, o in q.overrides.items() if isinstance(o, dict) and "side" in o]
    if over:
        raise InputError(f"quant.overrides[{over[0]!r}].side: the side is the whole run's; set quant.side instead")
    if q.side == "both":
        return
    if scheme(q.name).kind == "none":  # nothing is quantized, so no side is: recorded as both, like unused bits
        log.warning("quant.side=%s is ignored by quant=%s (nothing is quantized); recorded as both", q.side, q.name)
        q.side = "both"
        return
    if adapter:
        raise InputError(
            f"quant.side={q.side}: model.adapter was trained over a base quantized on both sides; use quant.side=both"
        )
    if q.save_dir:
        raise InputError(
            f"quant.side={q.side}: quant.save_dir writes a model quantized on both sides; use quant.side=both to save"
        )


def run_key(weights: dict[str, str], qkey: dict[str, Any], side: str) -> dict[str, Any]:
    """A run's embedding cache key parts. side=both: the keys of runs from before quant.side existed. One side: the
    quant part names it, and ``fp32_side`` names the other side, which medret.cache keys as the fp32 run's."""
    quant = {k: v for k, v in qkey.items() if k != "side"}
    if side == "both" or quant == {"name": "none"}:
        return {"weights": weights, "quant": quant}
    return {"weights": weights, "quant": {**quant, "side": side}, "fp32_side": OTHER[side]}


def export_key(key: dict[str, Any], side: str) -> dict[str, Any]:
    """The key an exported runtime's cache uses for one encoder: the fp32 side's is an unquantized run's."""
    parts = side_parts({**key, "side": side})
    return {k: v for k, v in parts.items() if k != "side"}


@dataclass
class Sides:
    """The encoders the quantizer sees (a retriever view) and those left in fp32."""

    quantized: list[TextEncoder]
    fp32: list[TextEncoder]
    shared: bool  # one model served both sides before the split

    def encoders(self) -> list[TextEncoder]:
        return self.quantized


def split_sides(retriever: Retriever, side: str) -> Sides:
    """Which encoders ``side`` quantizes. A model both sides share is copied first (its quantized side gets the
    copy), so the other side keeps the fp32 weights. Changes ``retriever`` in place."""
    shared = retriever.query.model is retriever.doc.model
    if side == "both":
        return Sides(retriever.encoders(), [], shared)
    if shared:
        own = copy.copy(getattr(retriever, side))
        own.model = copy.deepcopy(own.model)
        setattr(retriever, side, own)
    other = OTHER[side]
    return Sides([getattr(retriever, side)], [getattr(retriever, other)], shared)


def account_sizes(info: dict[str, Any], sides: Sides, side: str) -> None:
    """Sizes of the deployed pair (rule in the module docstring); call before any packed weights are decoded."""
    kept_bytes = sum(state_bytes(e.model) for e in sides.fp32)
    kept_params = sum(param_count(e.model) for e in sides.fp32)
    info["bytes_by_side"] = {side: info["model_bytes"], OTHER[side]: kept_bytes}
    info.update(model_sizes([*sides.quantized, *sides.fp32], info["params_all"] + kept_params))
    if not sides.shared:  # a pair's fp32 deployment holds both models; a symmetric one's holds one
        info["fp32_model_bytes"] += kept_bytes


def quantize_sides(retriever: Retriever, plan: QuantPlan, calibration: list[str] | None) -> dict[str, Any]:
    """Quantize ``plan.config.side``'s encoders in place; the quant info for results.json, sizes as deployed."""
    side = plan.config.side
    sides = split_sides(retriever, side)
    info = quantize_retriever(retriever if side == "both" else sides, plan, calibration=calibration)
    info["side"] = side
    if side != "both":
        account_sizes(info, sides, side)
    return info
