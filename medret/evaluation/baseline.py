"""The fp32 baseline of a (model, data) pair, computed once and cached on disk for every quantized run."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_baseline(
    path: Path,
    query_ids: list[str],
    per_query: dict[str, np.ndarray],
    ranked: list[list[str]],
    query_emb: np.ndarray,
    doc_sample: np.ndarray,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    depth = max((len(r) for r in ranked), default=0)
    ranked_arr = np.array([r + [""] * (depth - len(r)) for r in ranked], dtype=str)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                query_ids=np.array(query_ids, dtype=str),
                ranked=ranked_arr,
                query_emb=query_emb,
                doc_sample=doc_sample,
                metric_names=np.array(list(per_query), dtype=str),
                metrics=np.stack([per_query[m] for m in per_query]),
            )
        os.replace(tmp, path)  # concurrent sweep jobs: last complete writer wins, readers never see half
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_baseline(path: Path, query_ids: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        z = np.load(path, allow_pickle=False)
        if z["query_ids"].tolist() != query_ids:
            return None  # another query set under the same key: recompute and overwrite
        return {
            "ranked": [[d for d in row if d] for row in z["ranked"].tolist()],
            "query_emb": z["query_emb"],
            "doc_sample": z["doc_sample"],
            "per_query": dict(zip(z["metric_names"].tolist(), z["metrics"])),
        }
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)  # corrupt: recompute rather than trust it
        return None
