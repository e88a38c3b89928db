"""One module at a time: a weight to its QuantState, a linear or the word-embedding table replaced, and the
report of what each stores and how far it is from fp32."""

from __future__ import annotations

import math

import torch
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant import outliers
from medret.quant.bnb import dequantized_weight, replace_linear
from medret.quant.embedding import QuantEmbedding, TieredEmbedding, bnb_embedding, word_embeddings
from medret.quant.linear import QuantLinear
from medret.quant.registry import method, scheme
from medret.quant.rotate import RotatedLinear, rotation_for, unrotated_weight
from medret.quant.select import architecture, group_size_for, spec_for
from medret.quant.sizes import bytes_by_part, tensor_bytes
from medret.quant.state import QuantState, dequantize


def quantize_weight(
    weight: torch.Tensor, spec: QuantConfig, group_size: int, importance: torch.Tensor | None = None
) -> QuantState:
    """A custom scheme from the registry, rounded by the spec's method (its own fit, else the scheme's
    round-to-nearest), on the dense part of the optional dense-and-sparse split."""
    dense, idx, val = outliers.split(weight.float(), spec.outlier_fraction)
    if importance is not None and idx.numel():  # outliers are kept exactly: they pull no centroid
        importance = importance.reshape(-1).index_fill(0, idx.long(), 0.0).view_as(weight)
    fit = method(spec.method).fit or scheme(spec.name).quantize
    return outliers.attach(fit(dense, spec, group_size, importance), idx, val)


def error_stats(w: torch.Tensor, w_hat: torch.Tensor) -> dict[str, float]:
    err = (w.float() - w_hat.float()).pow(2).sum().item()
    sig = w.float().pow(2).sum().item()
    return {"mse": err / w.numel(), "sqnr_db": 10 * math.log10(sig / err) if err > 0 else float("inf")}


def bnb_layer(name: str, lin: nn.Linear, spec: QuantConfig, device: torch.device) -> tuple[nn.Module, dict]:
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


def custom_layer(
    name: str, lin: nn.Linear, spec: QuantConfig, device: torch.device, importance: torch.Tensor | None
) -> tuple[nn.Module, dict]:
    w = lin.weight.detach().cpu()
    gs = group_size_for(w, spec, name)
    rot = rotation_for(name, lin.in_features, spec)
    if rot is not None:  # rounded in the rotated basis; its errors are the same there (R is orthogonal)
        w = rot.apply(w.float())
    state = quantize_weight(w, spec, gs, importance)
    new = QuantLinear.from_state(state, lin.bias).to(device)
    return (new if rot is None else RotatedLinear(new, rot)), layer_report(name, spec, gs, w, state)


def layer_report(
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
        **({} if spec.rotate == "none" else {"rotate": spec.rotate}),
        "effective_bits": state.effective_bits(),
        "params": w.numel(),
        **error_stats(w, dequantize(state) if decoded is None else decoded),
    }


def quantize_embeddings(model: nn.Module, cfg: QuantConfig, device: torch.device) -> dict:
    """The word-embedding table with the run's scheme, bits and granularity; returns its layer report."""
    found = word_embeddings(model)
    if found is None:
        raise InputError(f"quant.embeddings=true: this {architecture(model)} model has no input embedding table")
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
    # a lookup table has no inputs for a whole-model pass (GPTQ's Hessians): its weights were rounded
    rounded = "rtn" if method(spec.method).model_pass else spec.method
    return {
        "name": name,
        "scheme": spec.name,
        "method": rounded,
        **report,
        "params": w.numel(),
        **error_stats(w, w_hat),
    }


def state_bytes(model: nn.Module) -> int:
    return sum(bytes_by_part(model).values())


def decode_once(model: nn.Module) -> int:
    """Replace each packed QuantLinear / QuantEmbedding by a dense fp32 module of its decoded weights:
    the same numbers the per-forward decode gives, without decoding on every batch; a rotated layer's
    rotation folded back into its weight (Q R on x: no run-time rotation). Returns how many."""
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, RotatedLinear) and isinstance(mod.inner, QuantLinear):
            inner = mod.inner
            dense = nn.Linear(inner.in_features, inner.out_features, bias=inner.bias is not None)
            if inner.bias is not None:
                dense.bias.data = inner.bias.detach().float().clone()
            dense.weight.data = unrotated_weight(mod, dequantize(inner.state()))
            model.set_submodule(name, dense.requires_grad_(False).to(inner.codebook.device), strict=True)
            n += 1
    for name, mod in list(model.named_modules()):
        if isinstance(mod, TieredEmbedding):
            model.set_submodule(name, mod.dense(), strict=True)
            n += 1
            continue
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
