"""What a model is, for cache keys: a digest of its weights as loaded (before quantization)."""

from __future__ import annotations

import hashlib

import torch


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(retriever) -> dict[str, str]:
    """Digests of the weights as loaded (before quantization): part of every cache key."""
    out = {"doc": weights_digest(retriever.doc.model)}
    out["query"] = out["doc"] if retriever.query.model is retriever.doc.model else weights_digest(retriever.query.model)
    return out
