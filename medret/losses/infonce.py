"""InfoNCE over in-batch (and optional hard) negatives, with false negatives masked out."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    q: torch.Tensor, docs: torch.Tensor, temperature: float, false_negatives: torch.Tensor | None = None
) -> torch.Tensor:
    """q [B, d], docs [B + extra, d] whose first B rows are the positives of q in order.

    ``false_negatives`` [B, B + extra] marks docs that are also relevant to a query (another pair of
    the same query in the batch): they are excluded from its denominator instead of pushed away.
    """
    logits = q.float() @ docs.float().T / temperature
    if false_negatives is not None:
        logits = logits.masked_fill(false_negatives, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))
