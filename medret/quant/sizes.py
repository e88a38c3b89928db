"""Bytes of a model by part (linear weights, the word-embedding table, the rest), counted from the
tensors themselves: bitsandbytes' embedding modules cannot produce a state_dict, and their scales live
beside the weight (``quant_state``, ``SCB``)."""

from __future__ import annotations

import torch
from torch import nn

from medret.quant.embedding import TieredEmbedding, word_embeddings
from medret.quant.linear import PackedModule, QuantLinear

PARTS = ("linear", "embeddings", "other")


def tensor_bytes(t: torch.Tensor) -> int:
    n = t.numel() * t.element_size()
    qs = getattr(t, "quant_state", None)  # bitsandbytes 4-bit: absmax (+ nested absmax) and code
    if qs is not None:
        for part in (qs.absmax, qs.code, getattr(qs, "offset", None)):
            n += part.numel() * part.element_size() if isinstance(part, torch.Tensor) else 0
        if getattr(qs, "state2", None) is not None:
            n += sum(x.numel() * x.element_size() for x in (qs.state2.absmax, qs.state2.code))
    scb = getattr(t, "SCB", None)  # bitsandbytes int8: one fp32 scale per row
    if isinstance(scb, torch.Tensor):
        n += scb.numel() * scb.element_size()
    return n


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, QuantLinear))


def bytes_by_part(model: nn.Module) -> dict[str, int]:
    """Linear weights (and their quantization state), the word-embedding table, and the rest
    (biases, norms, position embeddings). Non-persistent buffers (position ids) are not model bytes."""
    found = word_embeddings(model)
    table = found[1] if found else None
    out = dict.fromkeys(PARTS, 0)
    for m in model.modules():
        part = "embeddings" if m is table else "linear" if _is_linear(m) else "other"
        tensors = list(m.named_parameters(recurse=False))
        tensors += [(n, b) for n, b in m.named_buffers(recurse=False) if n not in m._non_persistent_buffers_set]
        for name, t in tensors:
            if t is not None:
                out["other" if part == "linear" and name == "bias" else part] += tensor_bytes(t)
    return out


def param_count(model: nn.Module) -> int:
    """Parameters as an fp32 model has them: a packed module (loaded from quant.save_dir, or a tiered embedding
    table) counts its weight."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, PackedModule) and m.planes is not None:
            n += m.state().numel
        elif isinstance(m, TieredEmbedding):
            n += m.num_embeddings * m.embedding_dim
    return n
