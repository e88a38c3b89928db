"""What a model is, for cache keys: a digest of its weights as loaded (before quantization)."""

from __future__ import annotations

import hashlib

import torch


def weights_digest(model: torch.nn.Module, unread: dict[str, torch.nn.Module] | None = None) -> str:
    """Over the model's tensors and those of its detached unread modules (medret.models.unread): the weights as on
    disk, so a digest does not change when a module is taken off."""
    state = dict(model.state_dict())
    for prefix, mod in (unread or {}).items():
        state.update({f"{prefix}.{k}": t for k, t in mod.state_dict().items()})
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(retriever) -> dict[str, str]:
    """Digests of the weights as loaded (before quantization): part of every cache key."""
    doc, query = retriever.doc, retriever.query
    out = {"doc": weights_digest(doc.model, doc.unread)}
    out["query"] = out["doc"] if query.model is doc.model else weights_digest(query.model, query.unread)
    return out
