"""How the scan rounds a point: ``quant.method=rtn`` (the scheme's round-to-nearest) or ``quant.method=gptq``
(GPTQ on the scheme's grid, as the run rounds), so the knapsack prices a width by the drop of the rounding the
run will do. Only one layer is quantized per point, so its GPTQ inputs are the fp32 model's: one pass over the
calibration texts collects every scanned layer's Hessian up front, then each (layer, width) is one GPTQ solve."""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

from medret.config import QuantConfig
from medret.quant.gptq import gptq_quantize
from medret.quant.layers import quantize_weight
from medret.quant.state import QuantState

METHODS = ("rtn", "gptq")  # the scan's roundings (quant.method); refinement is the run's alone (per-point: minutes)


@torch.no_grad()
def hessians(
    model: nn.Module, tokenizer, texts: list[str], names: list[str], max_length: int, batch_size: int = 16
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """H = 2 X^T X / tokens of every layer in ``names`` over the non-padding tokens of ``texts`` through the fp32
    model (one forward per batch, every layer captured at once); and what it cost."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    sums = {n: torch.zeros(model.get_submodule(n).in_features, model.get_submodule(n).in_features) for n in names}
    counts = dict.fromkeys(names, 0)
    mask: list[torch.Tensor] = []

    def capture(name: str, _m, args) -> None:
        x = args[0]
        if x.dim() == 3 and x.shape[:2] == mask[0].shape:
            x = x[mask[0].bool()]
        x = x.reshape(-1, x.shape[-1]).float().cpu()
        sums[name].addmm_(x.T, x)
        counts[name] += x.shape[0]

    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: capture(n, m, a)) for n in names]
    was_training = model.training
    model.eval()
    ordered = sorted(texts, key=len)
    try:
        for s in tqdm(range(0, len(ordered), batch_size), desc="scan hessians", leave=False, mininterval=2.0):
            enc = tokenizer(
                ordered[s : s + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(device)
            mask[:] = [enc["attention_mask"].cpu()]
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    tokens = max(counts.values(), default=0)
    out = {n: sums[n] * (2.0 / max(counts[n], 1)) for n in names}
    return out, {"hessian_seconds": time.perf_counter() - t0, "calibration_tokens": tokens}


def round_layer(
    weight: torch.Tensor,
    spec: QuantConfig,
    group_size: int,
    importance: torch.Tensor | None,
    hessian: torch.Tensor | None,
) -> QuantState:
    """One point's weight as the scan's method rounds it (GPTQ needs the layer's Hessian)."""
    if spec.method == "gptq":
        return gptq_quantize(weight, hessian, spec, group_size, importance, spec.gptq_damp, spec.act_order)
    return quantize_weight(weight, spec, group_size, importance)
