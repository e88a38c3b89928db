"""The scan of the word-embedding table (``scan.embeddings=true``) and of what the rest of the model stores,
so ``quant=auto quant.budget_over=model`` can spend one budget over every parameter.

The table's rows are cut into frequency tiers exactly as a run with ``quant.embedding_tiers`` cuts them
(``medret.quant.embedding_tiers``: token counts of the same calibration texts); each tier alone is rounded at
each width (the run's scheme, scales refitted, as the run stores it) and measured like a linear layer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant.embedding import index_bits, word_embeddings
from medret.quant.embedding_tiers import assign_tiers, quantize_rows, token_counts
from medret.quant.select import architecture, group_size_for
from medret.quant.sizes import bytes_by_part, param_count
from medret.quant.state import dequantize


@dataclass
class Table:
    """One encoder's word-embedding table and each row's tier."""

    name: str
    weight: nn.Parameter
    counts: torch.Tensor
    tier: torch.Tensor


def check_table_options(shares: list, q: QuantConfig) -> None:
    if not all(isinstance(s, (int, float)) and 0 < s < 1 for s in shares) or list(shares) != sorted(set(shares)):
        raise InputError(
            f"scan.embedding_tiers={list(shares)}: expected increasing shares of the vocabulary in (0, 1) "
            "ending every tier but the last (e.g. [0.02, 0.1, 0.3]; [] for the whole table as one)"
        )
    if q.granularity in ("tensor", "rows"):
        raise InputError(
            "scan.embeddings=true: the table's tiers need groups within a row (granularity channel or group)"
        )


def tables(encoders: list, shares: list[float], texts: list[str]) -> list[Table]:
    """Each encoder's table with its rows' tiers, from the token counts of the calibration ``texts``."""
    out = []
    for e in encoders:
        found = word_embeddings(e.model)
        if found is None or not isinstance(found[1], nn.Embedding):
            raise InputError(f"scan.embeddings=true: this {architecture(e.model)} model has no input embedding table")
        name, emb = found
        counts = token_counts(e.tokenizer, texts, emb.num_embeddings, e.settings.max_length)
        out.append(Table(name, emb.weight, counts, assign_tiers(counts, list(shares))))
    return out


@contextmanager
def only_tier(tabs: list[Table], tier: int, spec: QuantConfig, bits: int) -> Iterator[dict[str, float]]:
    """Tier ``tier``'s rows of every table hold their rounded-then-decoded values inside the block (the rest
    fp32); the fp32 rows are back after it. Yields the tier's storage and weight error."""
    saved, stats = [], {"effective_bits": 0.0, "weight_mse": 0.0}
    try:
        for t in tabs:
            rows = (t.tier == tier).nonzero()[:, 0].to(t.weight.device)
            if not len(rows):
                continue
            w = t.weight.data[rows].float().cpu()
            state = quantize_rows(w, spec, bits, group_size_for(t.weight, spec, t.name))
            w_hat = dequantize(state)
            stats["effective_bits"] = state.effective_bits()
            stats["weight_mse"] = float((w_hat - w).pow(2).mean())
            saved.append((t, rows, t.weight.data[rows].clone()))
            t.weight.data[rows] = w_hat.to(t.weight.device, t.weight.dtype)
        yield stats
    finally:
        for t, rows, original in saved:
            t.weight.data[rows] = original


def table_groups(tab: Table, shares: list[float]) -> list[dict]:
    """Each tier of the first encoder's table: its rows and the share of the counted tokens they hold."""
    total = max(int(tab.counts.sum()), 1)
    dim = tab.weight.shape[1]
    groups = []
    for i in range(len(shares) + 1):
        hit = tab.tier == i
        rows = int(hit.sum())
        groups.append(
            {
                "name": f"{tab.name}[tier {i}]",
                "tier": i,
                "rows": rows,
                "params": rows * dim,
                "occurrence_share": float(tab.counts[hit].sum()) / total,
                "seen_rows": int((tab.counts[hit] > 0).sum()),
            }
        )
    return groups


def table_info(tab: Table, shares: list[float]) -> dict:
    """What quant=auto needs beside the groups' curves: the table's shape, the tiers and the map's cost."""
    rows, dim = tab.weight.shape
    bits = index_bits(len(shares) + 1)
    return {
        "name": tab.name,
        "rows": rows,
        "dim": dim,
        "tiers": list(shares),
        "index_bits": bits,
        "index_bytes": bits * ((rows + 7) // 8),  # the packed row -> tier map
        "calibration_tokens": int(tab.counts.sum()),
        "seen_rows": int((tab.counts > 0).sum()),
        "rounding": "the scheme's round-to-nearest, each group's scale refitted by least squares",
    }


def model_size(model: nn.Module, linears: list[str], table: str | None) -> dict:
    """Every parameter of the model as loaded, and the bytes of all it stores besides the scanned linears'
    weights and the table (biases, norms, position embeddings, unscanned linears): what a quantization of the
    scanned parts leaves as it is."""
    parts = bytes_by_part(model)
    chosen = [model.get_submodule(n).weight for n in linears]
    if table is not None:
        chosen.append(model.get_submodule(table).weight)
    fixed = sum(parts.values()) - sum(w.numel() * w.element_size() for w in chosen)
    return {
        "params_all": param_count(model),
        "fixed_bytes": fixed,
        "fp32_bytes": sum(parts.values()),
        "note": "fixed_bytes: stored as loaded by any choice (biases, norms, position embeddings, unscanned linears)",
    }


def tier_spec(q: QuantConfig) -> QuantConfig:
    """The scan's scheme for the table's rows: round-to-nearest whatever the linears' rounding method."""
    return replace(q, method="rtn", overrides={})
