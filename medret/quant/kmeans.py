"""Non-uniform codebooks by 1-D Lloyd-Max / k-means, one codebook per group, all groups at once.

``importance`` (e.g. squared gradients, SqueezeLLM's Fisher diagonal) weights each weight's pull on
its centroid; without it this is plain k-means minimising weight MSE.
"""

from __future__ import annotations

import torch

from medret.quant.registry import Scheme, register
from medret.quant.state import QuantState, dequantize, groups_of, make_state, nearest_level


def fit_codebooks(g: torch.Tensor, k: int, importance: torch.Tensor | None, iters: int) -> torch.Tensor:
    """[groups, n] -> sorted centroids [groups, k], vectorised over groups."""
    q = (torch.arange(k, dtype=g.dtype, device=g.device) + 0.5) / k
    cent = torch.quantile(g, q, dim=1).T.contiguous()  # quantile init: no empty clusters at start
    if importance is None:
        w = torch.ones_like(g)
    else:  # squared gradients can be ~1e-20: scale per group so only their relative size matters
        imp = importance.clamp(min=0)
        w = imp / imp.mean(dim=1, keepdim=True).clamp(min=1e-38) + 1e-6
    for _ in range(iters):
        codes = nearest_level(g, cent)
        sums = torch.zeros_like(cent).scatter_add_(1, codes, g * w)
        mass = torch.zeros_like(cent).scatter_add_(1, codes, w)
        new = torch.where(mass > 0, sums / mass.clamp(min=1e-30), cent)
        new, _ = new.sort(dim=1)
        if torch.allclose(new, cent):
            break
        cent = new
    return cent


def quantize(
    weight: torch.Tensor, bits: int, group_size: int, importance: torch.Tensor | None = None, iters: int = 25
) -> QuantState:
    g = groups_of(weight.float(), group_size)
    imp = None if importance is None else groups_of(importance.float(), group_size)
    cent = fit_codebooks(g, 2**bits, imp, iters).to(torch.float16).float()
    cent, _ = cent.sort(dim=1)
    codes = nearest_level(g, cent)
    return make_state(weight, bits, group_size, codes, cent)


register(
    Scheme(
        "kmeans",
        "custom",
        lambda w, spec, gs, imp: quantize(w, spec.bits, gs, None, spec.kmeans_iters),
        options=("kmeans_iters",),
    )
)
# SqueezeLLM-style: squared gradients on corpus texts weight each weight's pull on its centroid
register(
    Scheme(
        "fisher_kmeans",
        "custom",
        lambda w, spec, gs, imp: quantize(w, spec.bits, gs, imp, spec.kmeans_iters),
        calibrated=True,
        qat=False,
        options=("kmeans_iters",),
    )
)

__all__ = ["fit_codebooks", "quantize", "dequantize"]
