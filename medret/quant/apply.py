"""Quantize a retriever's encoders in place: pick modules, quantize each, report size and error."""

from __future__ import annotations

import dataclasses
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
from medret.quant import gptq, hqq_method, outliers, refine
from medret.quant.bnb import BNB_DEVICES, dequantized_weight, probe_compute_dtype, replace_linear
from medret.quant.calibration import squared_gradients
from medret.quant.embedding import QuantEmbedding, bnb_embedding, word_embeddings
from medret.quant.linear import QuantLinear
from medret.quant.registry import names, scheme
from medret.quant.sizes import bytes_by_part, tensor_bytes
from medret.quant.state import QuantState, dequantize

log = logging.getLogger(__name__)


def as_config(cfg: Any) -> QuantConfig:
    if isinstance(cfg, QuantConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantConfig), cfg))


def quant_identity(cfg) -> dict:
    """The quant settings that change the weights (cache keys, adapter checks): not where they are saved."""
    d = dataclasses.asdict(as_config(cfg))
    for key in ("save_dir", "decode"):  # where it is saved and when it is decoded change no embedding
        d.pop(key, None)
    for key in ("target_bits", "sensitivity", "sensitivity_measure", "grid"):  # quant=auto's request: resolved
        d.pop(key, None)
    if not d["embeddings"]:
        d.pop("embeddings")  # keeps the cache keys of runs from before the option existed
    if d["calibration_seed"] == 0:
        d.pop("calibration_seed")  # keeps the cache keys of runs from before the option existed
    if d["method"] != "gptq":  # GPTQ's own options change no other method's weights
        d.pop("gptq_damp")
        d.pop("act_order")
    if d["refine_steps"] == 0:  # keeps the cache keys of runs from before refinement existed
        d.pop("refine_steps")
        d.pop("refine_lr")
    if d["method"] == "rtn":
        d.pop("method")  # round-to-nearest runs keep the cache keys they had before methods existed
    return d


def _check_custom(cfg: QuantConfig) -> None:
    if cfg.bits is None or not 2 <= cfg.bits <= 8:
        raise InputError(f"quant.bits={cfg.bits}: scheme {cfg.name} needs an integer width in 2..8")
    if cfg.granularity not in ("tensor", "channel", "group"):
        raise InputError(f"quant.granularity={cfg.granularity!r}: expected tensor, channel or group")
    if cfg.granularity == "group" and cfg.group_size < 2:
        raise InputError(f"quant.group_size={cfg.group_size}: expected at least 2")
    if not 0.0 <= cfg.outlier_fraction < 0.5:
        raise InputError(f"quant.outlier_fraction={cfg.outlier_fraction}: expected 0 <= fraction < 0.5")
    _check_method(cfg)


# schemes whose fitted grid GPTQ rounds to: every custom one but the dense-and-sparse split
GPTQ_SCHEMES = ("uniform", "nf", "log", "companding", "kmeans", "fisher_kmeans")


def _check_method(cfg: QuantConfig) -> None:
    if cfg.method not in ("rtn", "gptq", "hqq"):
        raise InputError(f"quant.method={cfg.method!r}: expected rtn, gptq or hqq")
    if cfg.method == "gptq":
        if cfg.name not in GPTQ_SCHEMES or cfg.outlier_fraction > 0:
            raise InputError(
                f"quant.method=gptq: rounds to the grid of {', '.join(GPTQ_SCHEMES)} without outliers, "
                f"not quant={cfg.name} with outlier_fraction={cfg.outlier_fraction}"
            )
        if not 0.0 < cfg.gptq_damp < 1.0:
            raise InputError(f"quant.gptq_damp={cfg.gptq_damp}: expected 0 < damp < 1 (a fraction of mean diag H)")
    if cfg.method == "hqq":
        if cfg.name != "uniform" or cfg.symmetric:
            raise InputError(
                f"quant.method=hqq: fits a uniform asymmetric grid (a scale and a zero per group); set "
                f"quant=uniform quant.symmetric=false, not quant={cfg.name} symmetric={cfg.symmetric}"
            )
        if cfg.bits not in hqq_method.BITS:
            raise InputError(f"quant.bits={cfg.bits}: method hqq supports {', '.join(map(str, hqq_method.BITS))}")


def _check_refine(cfg: QuantConfig, kind: str) -> None:
    if isinstance(cfg.refine_steps, bool) or not isinstance(cfg.refine_steps, int) or cfg.refine_steps < 0:
        raise InputError(f"quant.refine_steps={cfg.refine_steps!r}: expected an integer >= 0 (0 = no refinement)")
    if cfg.refine_steps and not cfg.refine_lr > 0:
        raise InputError(f"quant.refine_lr={cfg.refine_lr}: expected a learning rate > 0")
    if cfg.refine_steps and kind != "custom":
        raise InputError(
            f"quant.refine_steps: refines the packed floats of the custom schemes ({', '.join(names('custom'))}), "
            f"not quant={cfg.name}"
        )


def _check_bnb(cfg: QuantConfig, device: str) -> None:
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
    if dev not in BNB_DEVICES:
        raise InputError(
            f"quant.name={cfg.name}: bitsandbytes cannot run on device {dev!r} (supported: {', '.join(BNB_DEVICES)})"
        )
    if cfg.compute_dtype not in ("float32", "float16", "bfloat16"):
        raise InputError(f"quant.compute_dtype={cfg.compute_dtype!r}: expected float32, float16 or bfloat16")


def validate(cfg: QuantConfig, device: str = "auto") -> None:
    """Config errors that need no model: raised before anything is loaded."""
    cfg = as_config(cfg)
    s = scheme(cfg.name)
    if s.kind == "custom":
        _check_custom(cfg)
    elif cfg.method != "rtn" and s.kind != "none":  # none: the module is left as it is, by any method
        raise InputError(f"quant.method={cfg.method}: needs a custom scheme (a grid it fits), not quant={cfg.name}")
    _check_refine(cfg, s.kind)
    if needs_calibration(cfg) and cfg.calibration_texts < 2:
        raise InputError(f"quant.calibration_texts={cfg.calibration_texts}: expected at least 2 corpus texts")
    if isinstance(cfg.calibration_seed, bool) or not isinstance(cfg.calibration_seed, int):
        raise InputError(f"quant.calibration_seed={cfg.calibration_seed!r}: expected an integer")
    if s.kind == "bnb":
        _check_bnb(cfg, device)
    if s.check is not None:
        s.check(cfg)
    if cfg.grid is not None:  # quant=auto resolves it into the concrete scheme before any check
        raise InputError(f"quant.grid: only quant=auto takes a grid (this run's scheme is quant={cfg.name})")
    if cfg.decode not in ("once", "per_forward"):
        raise InputError(f"quant.decode={cfg.decode!r}: expected once or per_forward")
    if cfg.save_dir and s.kind != "custom":
        raise InputError(
            f"quant.save_dir: only the custom schemes ({', '.join(names('custom'))}) are saved, not {cfg.name}"
        )
    for pattern, spec in cfg.overrides.items():
        if not isinstance(spec, dict) or not set(spec) <= set(QuantConfig.__dataclass_fields__):
            raise InputError(f"quant.overrides[{pattern!r}]: expected a mapping of quant options, got {spec!r}")
        validate(replace(cfg, **spec, overrides={}), device)


def drop_unused_bits(cfg: QuantConfig) -> None:
    """``quant.bits`` under a scheme without a bit width (none, casts) is ignored: warned once and set to
    null, so results.json and the W&B tags never report a width that was not used."""
    if cfg.bits is not None and scheme(cfg.name).kind in ("none", "cast"):
        log.warning("quant.bits=%s is ignored by quant=%s (it has no bit width); recorded as null", cfg.bits, cfg.name)
        cfg.bits = None


def module_specs(cfg: QuantConfig) -> list[QuantConfig]:
    """The top-level spec and every override applied over it (what some module may run)."""
    cfg = as_config(cfg)
    return [cfg, *(replace(cfg, **over, overrides={}) for over in cfg.overrides.values())]


def needs_calibration(cfg) -> bool:
    """Whether any module's scheme (top level or an override) needs corpus texts (Fisher-weighted k-means)."""
    return as_config(cfg).refine_steps > 0 or any(
        spec.method == "gptq" or any(scheme(name).calibrated for name in (spec.name, spec.base) if name is not None)
        for spec in module_specs(cfg)
    )


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
    """A custom scheme from the registry, on the dense part of the optional dense-and-sparse split."""
    dense, idx, val = outliers.split(weight.float(), spec.outlier_fraction)
    if importance is not None and idx.numel():  # outliers are kept exactly: they pull no centroid
        importance = importance.reshape(-1).index_fill(0, idx.long(), 0.0).view_as(weight)
    fit = hqq_method.quantize if spec.method == "hqq" else scheme(spec.name).quantize
    return outliers.attach(fit(dense, spec, group_size, importance), idx, val)


def error_stats(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    err = (w.float() - w_hat.float()).pow(2).sum().item()
    sig = w.float().pow(2).sum().item()
    return {"mse": err / w.numel(), "sqnr_db": 10 * math.log10(sig / err) if err > 0 else float("inf")}


def _bnb_layer(name: str, lin: nn.Linear, spec: QuantConfig, device: torch.device) -> tuple[nn.Module, dict]:
    w = lin.weight.detach()
    new = replace_linear(lin, spec.name, spec, device)
    nbits = sum(t.numel() * t.element_size() * 8 for t in new.state_dict().values() if isinstance(t, torch.Tensor))
    nbits -= 0 if lin.bias is None else lin.bias.numel() * 32
    report = {
        "name": name,
        "scheme": spec.name,
        "bits": scheme(spec.name).bits,
        "effective_bits": nbits / w.numel(),
        "params": w.numel(),
        **error_stats(w.cpu(), dequantized_weight(new)),
    }
    return new, report


def _custom_layer(
    name: str, lin: nn.Linear, spec: QuantConfig, device: torch.device, importance: torch.Tensor | None
) -> tuple[nn.Module, dict]:
    w = lin.weight.detach()
    gs = group_size_for(w, spec, name)
    state = quantize_weight(w.cpu(), spec, gs, importance)
    return QuantLinear.from_state(state, lin.bias).to(device), _layer_report(name, spec, gs, w.cpu(), state)


def _layer_report(
    name: str,
    spec: QuantConfig,
    group_size: int,
    w: torch.Tensor,
    state: QuantState,
    decoded: torch.Tensor | None = None,
) -> dict:
    return {
        "name": name,
        "scheme": spec.name,
        "method": spec.method,
        "bits": spec.bits,
        "group_size": group_size,
        "effective_bits": state.effective_bits(),
        "params": w.numel(),
        **error_stats(w, dequantize(state) if decoded is None else decoded),
    }


def _gptq_layers(model: nn.Module, tokenizer, specs: dict, calibration, max_length: int, importance) -> list[dict]:
    """GPTQ over ``specs`` in forward order, after every other layer is quantized (its inputs are theirs)."""
    device = next(model.parameters()).device
    sizes = {n: group_size_for(model.get_submodule(n).weight, s, n) for n, s in specs.items()}
    done = gptq.quantize_layers(model, tokenizer, calibration, specs, sizes, max_length, importance)
    reports = []
    for name, r in done.items():
        lin = model.get_submodule(name)
        model.set_submodule(name, QuantLinear.from_state(r.state, lin.bias).to(device), strict=True)
        report = _layer_report(name, specs[name], sizes[name], r.weight, r.state, r.decoded)
        # calibration ||XW^T - XQ^T||^2 per token and output: GPTQ's and round-to-nearest's on the same scheme
        errors = {"output_mse": r.output_error, "output_mse_rtn": r.output_error_rtn, "calibration_tokens": r.tokens}
        reports.append({**report, **errors})
    return reports


def _quantize_embeddings(model: nn.Module, cfg: QuantConfig, device: torch.device) -> dict:
    """The word-embedding table with the run's scheme and bits (row-wise groups); returns its layer report."""
    found = word_embeddings(model)
    if found is None:
        raise InputError("quant.embeddings=true: this model has no input embedding table to quantize")
    name, emb = found
    spec = spec_for(name, cfg)
    w = emb.weight.detach().float().cpu()
    if scheme(spec.name).kind == "bnb":
        new = bnb_embedding(emb, spec.name, device)
        report = {"bits": scheme(spec.name).bits, "effective_bits": 8 * tensor_bytes(new.weight) / w.numel()}
        w_hat = new(torch.arange(w.shape[0], device=device)).float().cpu()
    else:  # a fitted codebook per row group; Fisher weights are for linears: plain k-means here
        gs = group_size_for(w, spec, name)
        state = quantize_weight(w, spec, gs, None)
        new = QuantEmbedding.from_state(state, emb.padding_idx).to(device)
        report = {"bits": spec.bits, "group_size": gs, "effective_bits": state.effective_bits()}
        w_hat = dequantize(state)
    model.set_submodule(name, new, strict=True)
    method = "rtn" if spec.method == "gptq" else spec.method  # a lookup table has no input Hessian: rounded
    return {"name": name, "scheme": spec.name, "method": method, **report, "params": w.numel(), **error_stats(w, w_hat)}


def quantize_model(
    model: nn.Module, tokenizer, cfg: QuantConfig, calibration: list[str] | None, pooling: str, max_length: int
) -> dict[str, Any]:
    device = next(model.parameters()).device
    specs = {n: spec_for(n, cfg) for n in select_linears(model, cfg)}
    specs = {n: s for n, s in specs.items() if s.name != "none"}
    importance: dict[str, torch.Tensor] = {}
    need_fisher = [n for n, s in specs.items() if any(scheme(x).calibrated for x in (s.name, s.base) if x)]
    if (need_fisher or cfg.refine_steps or any(s.method == "gptq" for s in specs.values())) and not calibration:
        raise InputError(f"quant={cfg.name} method={cfg.method}: no calibration texts (the corpus is empty)")
    targets = refine.targets(model, tokenizer, calibration, max_length) if cfg.refine_steps else None  # fp32's
    if need_fisher:
        importance = squared_gradients(model, tokenizer, calibration, need_fisher, pooling, max_length)
    by_gptq = {n: s for n, s in specs.items() if s.method == "gptq"}
    layers, compute_dtype = [], None
    for name, spec in ((n, s) for n, s in specs.items() if n not in by_gptq):
        lin = model.get_submodule(name)
        if scheme(spec.name).kind == "bnb":
            new, report = _bnb_layer(name, lin, spec, device)
            if report["bits"] == 4 and compute_dtype is None:
                compute_dtype = probe_compute_dtype(new, lin.weight.detach())
        else:
            new, report = _custom_layer(name, lin, spec, device, importance.get(name))
        layers.append(report)
        model.set_submodule(name, new, strict=True)
    embedding = _quantize_embeddings(model, cfg, device) if cfg.embeddings else None  # before GPTQ reads inputs
    if by_gptq:
        layers += _gptq_layers(model, tokenizer, by_gptq, calibration, max_length, importance)
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


def state_bytes(model: nn.Module) -> int:
    return sum(bytes_by_part(model).values())


def decode_once(model: nn.Module) -> int:
    """Replace each packed QuantLinear / QuantEmbedding by a dense fp32 module of its decoded weights:
    the same numbers the per-forward decode gives, without decoding on every batch. Returns how many."""
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QuantLinear):
            dense = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            if mod.bias is not None:
                dense.bias.data = mod.bias.detach().float().clone()
        elif isinstance(mod, QuantEmbedding):
            dense = nn.Embedding(mod.num_embeddings, mod.embedding_dim, padding_idx=mod.padding_idx)
        else:
            continue
        dense.weight.data = dequantize(mod.state()).float()
        dense.requires_grad_(False)
        model.set_submodule(name, dense.to(mod.codebook.device), strict=True)
        n += 1
    return n
