"""Modules a retriever never reads, taken off the model so they are neither stored nor counted.

A transformers pooler (BERT, MPNet, RoBERTa: dense + tanh over the first token) only feeds ``pooler_output``;
medret pools ``last_hidden_state`` (mean or cls), so the pooler is dead weight: 0.59 MB of MiniLM in fp32,
2.4 MB of MPNet. Models whose class takes ``add_pooling_layer`` run their forward with ``pooler=None``, which is
what this relies on. The detached modules are kept beside the model: the weights digest still covers them (so
cache keys and saved models' source digests are those of the weights on disk) and a fine-tuned fp32 export
writes them back (other tools loading that folder get the real pooler, not a random one)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

from torch import nn

UNREAD = ("pooler",)


def _detachable(model: nn.Module) -> bool:
    return "add_pooling_layer" in inspect.signature(type(model).__init__).parameters


def detach_unread(model: nn.Module) -> dict[str, nn.Module]:
    """Take the unread modules off ``model`` (set to None); returns them by attribute name."""
    if not _detachable(model):
        return {}
    out = {}
    for name in UNREAD:
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Module):
            out[name] = mod
            setattr(model, name, None)
    return out


@contextlib.contextmanager
def attached(model: nn.Module, unread: dict[str, nn.Module]) -> Iterator[nn.Module]:
    """``model`` with its detached modules back on it (for writing a complete HF folder), detached again after."""
    for name, mod in unread.items():
        setattr(model, name, mod)
    try:
        yield model
    finally:
        for name in unread:
            setattr(model, name, None)
