"""Quantize one model's linears (and optionally its word-embedding table) in place, as a config says:
each selected linear by its spec's scheme and rounding method, then the methods that pass over the whole
model (GPTQ), then the optional refinement of the stored floats."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant import embedding_tiers, refine, rotate
from medret.quant.bnb import EMBEDDING_BLOCKSIZE, check_row_blocks, probe_compute_dtype
from medret.quant.embedding import word_embeddings
from medret.quant.fisher import squared_gradients
from medret.quant.layers import bnb_layer, custom_layer, decode_once, quantize_weight, state_bytes
from medret.quant.memory import check_memory
from medret.quant.options import as_config, drop_unused_bits
from medret.quant.registry import method, scheme
from medret.quant.select import architecture, group_size_for, select_linears, spec_for

# re-exported for older import paths (bench/gpubench, training/checks.py, tests); new code imports quant.options/layers
__all__ = ["decode_once", "drop_unused_bits", "layer_specs", "quantize_model", "quantize_weight", "state_bytes"]


def layer_specs(model: nn.Module, cfg: QuantConfig) -> dict[str, QuantConfig]:
    """Each linear the config quantizes (quant.include minus quant.exclude, not overridden to none), with its spec."""
    specs = {n: spec_for(n, cfg) for n in select_linears(model, cfg)}
    return {n: s for n, s in specs.items() if s.name != "none"}


def _round_each(
    model: nn.Module, specs: dict[str, QuantConfig], device: torch.device, importance: dict[str, torch.Tensor]
) -> tuple[list[dict], str | None]:
    """Every layer of ``specs`` replaced by its quantized module, one at a time; (reports, bnb 4-bit dtype)."""
    layers, compute_dtype = [], None
    for name, spec in specs.items():
        lin = model.get_submodule(name)
        if scheme(spec.name).kind == "bnb":
            new, report = bnb_layer(name, lin, spec, device)
            if report["bits"] == 4 and compute_dtype is None:
                compute_dtype = probe_compute_dtype(new, lin.weight.detach())
        else:
            new, report = custom_layer(name, lin, spec, device, importance.get(name))
        layers.append(report)
        model.set_submodule(name, new, strict=True)
    return layers, compute_dtype


def _bnb_4bit(spec: QuantConfig) -> bool:
    return scheme(spec.name).kind == "bnb" and scheme(spec.name).bits == 4


def _check_table_groups(model: nn.Module, cfg: QuantConfig) -> None:
    """The word-embedding table's groups, before any layer is rounded (e.g. a rows count the vocabulary size does
    not divide)."""
    found = word_embeddings(model) if cfg.embeddings else None
    if found is not None and scheme(spec_for(found[0], cfg).name).kind == "custom":
        group_size_for(found[1].weight, spec_for(found[0], cfg), found[0])


def _check_bnb_blocks(model: nn.Module, specs: dict[str, QuantConfig], cfg: QuantConfig, device) -> None:
    """The 4-bit bitsandbytes layers' rows against their block size, before any layer is replaced."""
    four = {n: s for n, s in specs.items() if _bnb_4bit(s)}
    for bs in {s.blocksize for s in four.values()}:
        widths = {n: model.get_submodule(n).in_features for n, s in four.items() if s.blocksize == bs}
        check_row_blocks(widths, bs, device, architecture(model))
    found = word_embeddings(model) if cfg.embeddings else None
    if found and _bnb_4bit(spec_for(found[0], cfg)):
        option = "quant.embeddings=true (bitsandbytes' 4-bit embeddings: blocks of 64)"
        check_row_blocks({found[0]: found[1].embedding_dim}, EMBEDDING_BLOCKSIZE, device, architecture(model), option)


def _by_model_pass(specs: dict[str, QuantConfig]) -> dict[str, dict[str, QuantConfig]]:
    """The layers each whole-model method (GPTQ) rounds, by method name, in forward order."""
    passes: dict[str, dict[str, QuantConfig]] = {}
    for name, spec in specs.items():
        if method(spec.method).model_pass is not None:
            passes.setdefault(spec.method, {})[name] = spec
    return passes


def quantize_model(
    model: nn.Module, tokenizer, cfg: QuantConfig, calibration: list[str] | None, pooling: str, max_length: int
) -> dict[str, Any]:
    cfg = as_config(cfg)
    device = next(model.parameters()).device
    specs = layer_specs(model, cfg)
    need_fisher = [n for n, s in specs.items() if any(scheme(x).calibrated for x in (s.name, s.base) if x)]
    by_method = any(method(s.method).calibrated for s in specs.values())  # GPTQ's Hessians
    if (need_fisher or cfg.refine_steps or by_method) and not calibration:
        raise InputError(f"quant={cfg.name} method={cfg.method}: no calibration texts (the corpus is empty)")
    check_memory(model, tokenizer, specs, cfg, calibration, max_length)  # GPTQ's and refinement's peak, up front
    rotate.check_layers(model, specs)
    _check_bnb_blocks(model, specs, cfg, device)
    _check_table_groups(model, cfg)
    targets = refine.targets(model, tokenizer, calibration, max_length) if cfg.refine_steps else None  # fp32's
    importance: dict[str, torch.Tensor] = {}
    if need_fisher:
        importance = squared_gradients(model, tokenizer, calibration, need_fisher, pooling, max_length)
    passes = _by_model_pass(specs)
    in_pass = {n for group in passes.values() for n in group}
    layers, compute_dtype = _round_each(model, {n: s for n, s in specs.items() if n not in in_pass}, device, importance)
    embedding = None  # before a pass reads inputs; frequency tiers (quant.embedding_bits) count tokens of the texts
    if cfg.embeddings:
        embedding = embedding_tiers.quantize_table(model, tokenizer, cfg, device, calibration, max_length)
    for name, group in passes.items():
        layers += method(name).model_pass(model, tokenizer, group, calibration, max_length, importance)
        for layer, spec in group.items():  # the pass rounded W R^T (and left it packed): R goes around it
            rot = rotate.rotation_for(layer, model.get_submodule(layer).in_features, spec)
            if rot is not None:
                rotate.wrap(model, layer, rot)
    if passes:
        order = list(specs)
        layers.sort(key=lambda x: order.index(x["name"]))
    if embedding is not None:
        layers.append(embedding)
    refined = refine.fit(model, targets, cfg.refine_steps, cfg.refine_lr, cfg.calibration_seed) if targets else None
    total = sum(x["params"] for x in layers)
    return {
        **({"refine": refined} if refined else {}),
        "layers": layers,
        "quantized_params": total,
        "effective_bits_per_param": sum(x["effective_bits"] * x["params"] for x in layers) / total if total else None,
        "bnb_4bit_compute_dtype_ran": compute_dtype,
    }
