"""Label-free distillation losses: the quantized student against the fp32 teacher on the same texts."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cosine(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of 1 - cosine to the teacher's token output (refinement's loss): every token a
    constraint, so a small batch still pins down many directions of each layer."""
    cos = F.cosine_similarity(hidden.float(), target.float(), dim=-1)
    m = mask.to(cos.dtype)
    return ((1 - cos) * m).sum() / m.sum()


def cosine_matrix(emb: torch.Tensor) -> torch.Tensor:
    e = F.normalize(emb.float(), dim=-1)
    return e @ e.T


def similarity_structure(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the student's and the teacher's cosine-similarity matrices of the same texts, off the diagonal
    (always 1): the text-to-text similarities retrieval ranks by, invariant to a rotation of the embedding space."""
    s, t = cosine_matrix(student), cosine_matrix(teacher.detach())
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return (s - t)[off].pow(2).mean()
