"""Squared-gradient (Fisher diagonal) importance of each weight, from unlabelled corpus texts.

The loss is an in-batch contrastive one between two crops of the same text (Contriever-style), so
no relevance labels are needed and no test qrels leak into quantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _crops(texts: list[str]) -> tuple[list[str], list[str]]:
    a, b = [], []
    for t in texts:
        words = t.split()
        half = max(1, len(words) // 2)
        a.append(" ".join(words[: half + len(words) // 4]) or t)
        b.append(" ".join(words[half - len(words) // 4 :]) or t)
    return a, b


def squared_gradients(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    names: list[str],
    pooling: str,
    max_length: int,
    batch_size: int = 16,
    temperature: float = 0.05,
) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    params = {n: modules[n].weight for n in names}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    flags = {n: p.requires_grad for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    device = next(model.parameters()).device

    def embed(batch: list[str]) -> torch.Tensor:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        h = model(**enc).last_hidden_state
        if pooling == "cls":
            e = h[:, 0]
        else:
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(e, dim=-1)

    a, b = _crops(texts)
    for s in range(0, len(texts), batch_size):
        if len(a[s : s + batch_size]) < 2:
            break
        ea, eb = embed(a[s : s + batch_size]), embed(b[s : s + batch_size])
        logits = ea @ eb.T / temperature
        loss = F.cross_entropy(logits, torch.arange(len(ea), device=device))
        model.zero_grad(set_to_none=True)
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += p.grad.detach().float() ** 2
    model.zero_grad(set_to_none=True)
    for n, p in params.items():
        p.requires_grad_(flags[n])
    model.train(was_training)
    return acc
