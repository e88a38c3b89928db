"""Frequency tiers of the word-embedding table: ``quant.embedding_bits`` / ``quant.embedding_tiers``.

A lookup reads one row per token, so a row's rounding error reaches the encoder as often as its token occurs
in the texts: bits spent on the rows of frequent tokens buy the most, and most of a general vocabulary never
occurs in a medical corpus at all. The rows are ranked by how often the corpus calibration texts (the same
seeded sample GPTQ and refinement read; never queries) use their token; tier t, most frequent first, holds the
rows up to the cumulative share ``embedding_tiers[t]`` of the vocabulary and is stored at ``embedding_bits[t]``
with the run's scheme (row-wise groups); every row never seen goes to the last tier.

Why fixed shares of the rows rather than a per-row error budget: the shares fix each tier's size (a row never
seen can only move down, so never more bytes), so the table's bytes are known before any text is read, and
``quant=auto`` can price each tier by its bytes and its measured drop like any linear.

The scales of a scaled grid (uniform, nf, log, companding) are fitted to each group's least-squares optimum
for its codes, codes re-rounded, a few rounds (a closed form per group: seconds for MiniLM's table); a group
keeps the absmax fit where that is closer.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant.embedding import TieredEmbedding, word_embeddings
from medret.quant.layers import error_stats, quantize_embeddings, quantize_weight
from medret.quant.registry import scheme
from medret.quant.select import architecture, group_size_for, spec_for
from medret.quant.state import QuantState, groups_of, make_state, nearest_level

REFIT_ROUNDS = 4  # least-squares scale, then codes again: the error stops falling after 2-3 rounds


def check_embedding_options(cfg: QuantConfig) -> None:
    """The tier options against each other and the scheme, before anything loads (one error line each)."""
    bits, shares = cfg.embedding_bits, cfg.embedding_tiers
    if bits is None:
        if shares is not None:
            raise InputError(f"quant.embedding_tiers={list(shares)}: needs quant.embedding_bits (a width per tier)")
        return
    bits = list(bits)
    if not cfg.embeddings:
        raise InputError(
            f"quant.embedding_bits={bits}: sets the word-embedding table's widths; needs quant.embeddings=true"
        )
    if scheme(cfg.name).kind != "custom":
        raise InputError(f"quant.embedding_bits: frequency tiers store a custom scheme's rows, not quant={cfg.name}")
    if not bits or not all(isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= 8 for b in bits):
        raise InputError(f"quant.embedding_bits={bits}: expected a list of integer widths in 2..8, most frequent first")
    if cfg.granularity in ("tensor", "rows"):
        raise InputError(
            "quant.embedding_bits: tiers need groups within a row (granularity channel or group), "
            f"not {cfg.granularity}"
        )
    want = len(bits) - 1
    got = [] if shares is None else list(shares)
    if len(got) != want or not all(isinstance(s, (int, float)) and 0 < s < 1 for s in got) or got != sorted(set(got)):
        raise InputError(
            f"quant.embedding_tiers={shares}: expected {want} increasing share(s) of the vocabulary in (0, 1) "
            f"ending the tiers of quant.embedding_bits={bits} but the last (e.g. [0.02, 0.1] for 3 widths)"
        )
    from medret.quant.checks import validate  # the scheme at each width; imported late: checks may call here

    for b in dict.fromkeys(bits):
        validate(replace(cfg, bits=b, embeddings=False, embedding_bits=None, embedding_tiers=None, overrides={}))


def token_counts(tokenizer, texts: list[str], num_rows: int, max_length: int) -> torch.Tensor:
    """How often each row of the table is looked up when ``texts`` are encoded (special tokens included)."""
    counts = torch.zeros(num_rows, dtype=torch.long)
    for s in range(0, len(texts), 256):
        ids = tokenizer(list(texts[s : s + 256]), truncation=True, max_length=max_length)["input_ids"]
        flat = torch.tensor([i for row in ids for i in row if 0 <= i < num_rows], dtype=torch.long)
        counts += torch.bincount(flat, minlength=num_rows)
    return counts


def assign_tiers(counts: torch.Tensor, shares: list[float]) -> torch.Tensor:
    """Each row's tier: rows ranked by count (ties by row id), cut at the shares; a row never seen is last."""
    num = len(counts)
    order = torch.argsort(-counts, stable=True)
    tier = torch.full((num,), len(shares), dtype=torch.long)
    start = 0
    for i, share in enumerate(shares):
        end = round(share * num)
        rows = order[start:end]
        tier[rows[counts[rows] > 0]] = i
        start = end
    return tier


def _refit_scales(w: torch.Tensor, state: QuantState, group_size: int) -> QuantState:
    """Per group, the least-squares scale (and offset) for the current codes, then the nearest codes again;
    a group keeps whichever fit is closer, so the result is never worse than the scheme's own."""
    if state.scale is None or state.codebook.shape[0] != 1 or state.outlier_idx is not None:
        return state  # per-group codebooks (k-means) are least-squares fits already; outliers stay as fitted
    from medret.quant.packing import unpack_codes

    g = groups_of(w.float(), group_size)
    levels = state.codebook.float()[0]
    codes = unpack_codes(state.planes, state.bits, state.numel).view_as(g)
    s = state.scale.float()
    o = state.offset.float() if state.offset is not None else torch.zeros_like(s)
    err = (levels[codes] * s[:, None] + o[:, None] - g).pow(2).sum(1)
    for _ in range(REFIT_ROUNDS):
        c = levels[codes]
        if state.offset is None:
            s_new, o_new = (g * c).sum(1) / (c * c).sum(1).clamp(min=1e-30), o
        else:  # g ~ s c + o: the 2x2 normal equations per group
            n, sc, sg = g.shape[1], c.sum(1), g.sum(1)
            det = (n * (c * c).sum(1) - sc * sc).clamp(min=1e-30)
            s_new = (n * (c * g).sum(1) - sc * sg) / det
            o_new = ((sg - s_new * sc) / n).to(torch.float16).float()
        s_new = s_new.clamp(min=1e-12).to(torch.float16).float()  # fitted against the scale that is stored
        codes_new = nearest_level((g - o_new[:, None]) / s_new[:, None], levels)
        err_new = (levels[codes_new] * s_new[:, None] + o_new[:, None] - g).pow(2).sum(1)
        better = err_new < err
        if not better.any():
            break
        s, o, err = torch.where(better, s_new, s), torch.where(better, o_new, o), torch.where(better, err_new, err)
        codes = torch.where(better[:, None], codes_new, codes)
    offset = o if state.offset is not None else None
    return make_state(w, state.bits, group_size, codes, state.codebook, s, offset)


def quantize_rows(rows: torch.Tensor, spec: QuantConfig, bits: int, group_size: int) -> QuantState:
    """Some rows of the table at one width: the scheme's round-to-nearest (a lookup table has no inputs for
    GPTQ), scales refitted."""
    state = quantize_weight(rows, replace(spec, bits=bits, method="rtn"), group_size, None)
    return _refit_scales(rows, state, group_size)


def tiered_table(
    weight: torch.Tensor, tier: torch.Tensor, spec: QuantConfig, group_size: int, padding_idx: int | None = None
) -> TieredEmbedding:
    """The table packed tier by tier (``tier``: each row's tier; ``spec.embedding_bits``: each tier's width)."""
    states, specs = [], []
    for i, bits in enumerate(spec.embedding_bits):
        rows = (tier == i).nonzero()[:, 0]
        states.append(quantize_rows(weight[rows], spec, bits, group_size) if len(rows) else None)
        specs.append({"bits": bits, "group_size": group_size, "rows": len(rows)})
    return TieredEmbedding.from_states(tier, states, specs, padding_idx)


def quantize_table(
    model: nn.Module, tokenizer, cfg: QuantConfig, device: torch.device, texts: list[str] | None, max_length: int
) -> dict:
    """``quant.embeddings=true``: the table in frequency tiers when ``quant.embedding_bits`` is set, else every
    row at the run's width as before. Replaces the module; returns its layer report."""
    if not cfg.embedding_bits:
        return quantize_embeddings(model, cfg, device)
    found = word_embeddings(model)
    if found is None:
        raise InputError(f"quant.embedding_bits: this {architecture(model)} model has no input embedding table")
    name, emb = found
    spec = replace(spec_for(name, cfg), embedding_bits=list(cfg.embedding_bits))
    if len(spec.embedding_bits) > 1 and not texts:
        raise InputError("quant.embedding_bits: no corpus texts to count tokens in (the corpus is empty)")
    w = emb.weight.detach().float().cpu()
    counts = token_counts(tokenizer, texts or [], w.shape[0], max_length)
    tier = assign_tiers(counts, list(cfg.embedding_tiers or []))
    new = tiered_table(w, tier, spec, group_size_for(w, spec, name), emb.padding_idx)
    model.set_submodule(name, new.to(device), strict=True)
    total = max(int(counts.sum()), 1)
    tiers = [
        {
            **t,
            "occurrence_share": float(counts[tier == i].sum()) / total,
            "seen_rows": int((counts[tier == i] > 0).sum()),
        }
        for i, t in enumerate(new.tiers)
    ]
    return {
        "name": name,
        "scheme": spec.name,
        "method": "rtn",  # a lookup table has no inputs for GPTQ: rounded to nearest, scales refitted
        "bits": list(spec.embedding_bits),
        "tiers": tiers,
        "index_bits": new.index_bits,
        "calibration_tokens": int(counts.sum()),
        "effective_bits": new.effective_bits(),
        "params": w.numel(),
        **error_stats(w, new.dense().weight.detach().cpu()),
    }
