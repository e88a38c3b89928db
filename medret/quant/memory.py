"""Peak memory of the calibrated passes, estimated before they start, so a run that cannot fit says so in one
``error:`` line naming what to lower instead of being killed (or swapping) minutes in.

- GPTQ: every calibration text's hidden states at the current block (and the next block's, replayed), the
  blocks' attention masks, one batch's forward inside a block, the largest layer's Hessian and its inverse
  (double precision, on the host) and the working copies of its weights.
- Refinement: the fp32 model's token outputs on every calibration text (taken before any rounding and held
  through GPTQ too), every quantized weight's codes unpacked to int64, its decoded weight kept for the backward
  and its gradient, Adam's state of the fitted floats, one batch's activations kept for the backward.

Measured on CPU (random BERTs of hidden 256-384 on 256-512 texts), the process's peak RSS grew 15-35% more than
the sum of these parts (allocator caches, transient copies): ``OVERHEAD`` covers it.

Token counts are the real ones: the calibration texts tokenized and batched as both passes batch them.
Available memory is the host's (psutil's ``available``: free plus reclaimable cache) and, for a model on a
GPU, the device's free memory. ``MEDRET_AVAILABLE_MEMORY`` (bytes, or with a K/M/G/T suffix: ``12G``) replaces
that figure: lower, for a job sharing its machine (or a test of this check); higher, to run past an estimate
known to be pessimistic for a model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psutil
import torch
from torch import nn

from medret.errors import InputError
from medret.quant.registry import method
from medret.quant.select import architecture, group_size_for

ENV = "MEDRET_AVAILABLE_MEMORY"
BATCH = 16  # texts per batch in both passes (gptq._batches, refine.targets)
F32, F64, I64 = 4, 8, 8
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
OVERHEAD = 1.3  # peak RSS over the sum of the parts (see above)


@dataclass(frozen=True)
class Part:
    what: str
    nbytes: float
    per_text: bool  # grows with the calibration texts (their number and length)
    device: bool  # on the model's device; else on the host (the same memory for a model on the CPU)


def _batches(tokenizer, texts: list[str], max_length: int) -> list[tuple[int, int]]:
    """(texts, padded length) of each batch, as ``gptq._batches`` and ``refine.targets`` form them."""
    ordered = sorted(texts, key=len)
    lengths = [len(ids) for ids in tokenizer(ordered, truncation=True, max_length=max_length)["input_ids"]]
    return [(len(lengths[s : s + BATCH]), max(lengths[s : s + BATCH])) for s in range(0, len(lengths), BATCH)]


def _dims(model: nn.Module) -> tuple[int, int, int]:
    """(hidden size, attention heads, blocks); DistilBERT's dim / n_heads / n_layers answer to these names too."""
    c = model.config
    hidden = getattr(c, "hidden_size", None) or model.get_input_embeddings().embedding_dim
    return int(hidden), int(getattr(c, "num_attention_heads", 1)), int(getattr(c, "num_hidden_layers", 1))


def gptq_parts(model: nn.Module, linears: list[nn.Linear], batches: list[tuple[int, int]]) -> list[Part]:
    hidden, heads, blocks = _dims(model)
    tokens = sum(b * s for b, s in batches)
    b, s = max(batches, key=lambda x: x[0] * x[1])
    widest = max(lin.in_features for lin in linears)
    biggest = max(lin.weight.numel() for lin in linears)
    # a block's forward on one batch: each linear's input and output, the attention scores, norms and residuals
    per_token = sum(lin.in_features + lin.out_features for lin in linears) / blocks + heads * s + 4 * hidden
    return [
        Part("block inputs (hidden states, this block's and the next)", 2 * tokens * hidden * F32, True, True),
        Part("attention masks", sum(n * length**2 * F32 for n, length in batches), True, True),
        Part("one batch inside a block", b * s * per_token * F32, False, True),
        Part("Hessian", widest**2 * F32, False, True),
        Part("Hessian inverse (float64)", widest**2 * (3 * F64 + F32), False, False),
        Part("GPTQ working copies of a weight", biggest * (4 * F32 + I64), False, False),
    ]


def refine_parts(model: nn.Module, specs: dict, batches: list[tuple[int, int]]) -> tuple[Part, list[Part]]:
    """(the fp32 targets, held from before rounding to the end; the rest of refinement's peak) for the layers
    ``specs`` (name: spec)."""
    linears = [model.get_submodule(n) for n in specs]
    hidden, heads, blocks = _dims(model)
    tokens = sum(b * s for b, s in batches)
    b, s = max(batches, key=lambda x: x[0] * x[1])
    numel = sum(lin.weight.numel() for lin in linears)
    # at most: a scale, an offset and a codebook per group (k-means), each quantized layer's bias, every norm
    groups = sum(
        lin.weight.numel() / group_size_for(lin.weight, spec, name) * (2 + 2**spec.bits)
        for lin, (name, spec) in zip(linears, specs.items())
    )
    fitted = groups + sum(lin.out_features for lin in linears)
    fitted += sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    # saved for the backward, every block: each linear's input and output, the attention scores, norms, residuals
    per_token = sum(lin.in_features + lin.out_features for lin in linears) + blocks * (heads * s + 8 * hidden)
    targets = Part("fp32 targets", tokens * hidden * F32, True, True)
    return targets, [
        Part("unpacked codes (int64)", numel * I64, False, True),
        Part("decoded weights and their gradients", 2 * numel * F32, False, True),
        Part("Adam state of the fitted floats", 4 * fitted * F32, False, True),
        Part("one batch's activations", b * s * per_token * F32, False, True),
    ]


def override() -> int | None:
    """``MEDRET_AVAILABLE_MEMORY`` in bytes, or None when unset."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", raw, re.IGNORECASE)
    if not m:
        raise InputError(f"{ENV}={raw!r}: expected a number of bytes, optionally with K, M, G or T (e.g. 12G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def available(device: torch.device) -> dict[str, int]:
    """Bytes free now on the host and, for a model on a GPU, on its device; ``MEDRET_AVAILABLE_MEMORY`` instead
    when it is set."""
    pools = ("host", "device") if device.type == "cuda" else ("host",)
    figure = override()
    if figure is not None:
        return dict.fromkeys(pools, figure)
    free = {"host": psutil.virtual_memory().available}
    if device.type == "cuda":
        free["device"] = torch.cuda.mem_get_info(device)[0]
    return free


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


@dataclass
class Estimate:
    what: str  # the passes, as the options that ask for them
    parts: list[Part]
    need: dict[str, float]  # peak bytes by memory ("host", and "device" for a model on a GPU), overhead included
    grows: dict[str, float]  # of which grows with the calibration texts
    texts: int


def estimate(model: nn.Module, tokenizer, specs: dict, cfg, calibration: list[str], max_length: int):
    """The peak memory of GPTQ and refinement of ``model`` (its layers ``specs``); None when neither runs."""
    gptq = [n for n, s in specs.items() if method(s.method).model_pass is not None]
    if not (gptq or cfg.refine_steps) or not calibration or not specs:
        return None
    batches = _batches(tokenizer, calibration, max_length)
    passes: list[tuple[str, list[Part]]] = []
    held: list[Part] = []  # the fp32 targets: taken before rounding, kept through GPTQ and refinement
    if gptq:
        lins = [model.get_submodule(n) for n in gptq]
        passes.append((f"quant.method={specs[gptq[0]].method}", gptq_parts(model, lins, batches)))
    if cfg.refine_steps:
        targets, parts = refine_parts(model, specs, batches)
        held.append(targets)
        passes.append((f"quant.refine_steps={cfg.refine_steps}", parts))
    # on a GPU the device's parts and the host's are apart; on a CPU they share one memory
    on_gpu = next(model.parameters()).device.type == "cuda"
    pools = {"device": lambda p: p.device, "host": lambda p: not p.device} if on_gpu else {"host": lambda p: True}
    need, grows = {}, {}
    for pool, on in pools.items():
        sizes = []
        for _, parts in passes:  # one pass at a time, beside what is held
            mine = [p for p in held + parts if on(p)]
            sizes.append((sum(p.nbytes for p in mine), sum(p.nbytes for p in mine if p.per_text)))
        need[pool], grows[pool] = (OVERHEAD * x for x in max(sizes))
    every = held + [p for _, parts in passes for p in parts]
    what = f"{' and '.join(name for name, _ in passes)} on {architecture(model)}"
    return Estimate(what, every, need, grows, len(calibration))


def check_memory(model: nn.Module, tokenizer, specs: dict, cfg, calibration: list[str], max_length: int) -> None:
    """Raise one ``error:`` line when GPTQ or refinement of ``model`` (its layers ``specs``) cannot fit."""
    est = estimate(model, tokenizer, specs, cfg, calibration, max_length)
    if est is None:
        return
    free = available(next(model.parameters()).device)
    for pool, need in est.need.items():
        if need > free[pool]:
            _refuse(est, pool, free[pool])


def _refuse(est: Estimate, pool: str, free: float) -> None:
    need, grows = est.need[pool], est.grows[pool]
    largest = ", ".join(f"{p.what} {_gib(p.nbytes)}" for p in sorted(est.parts, key=lambda p: -p.nbytes)[:3])
    fixed = need - grows
    if fixed < free and grows > 0:
        fit = int(est.texts * (free - fixed) / grows)
        advice = f"lower quant.calibration_texts ({est.texts} now, about {fit} would fit) or model.max_length"
    else:
        advice = (
            "fewer calibration texts would not be enough: lower model.max_length, or use quant.method=rtn and "
            "quant.refine_steps=0, or more memory"
        )
    given = f" (set by {ENV})" if override() is not None else ""
    raise InputError(
        f"{est.what}: needs about {_gib(need)} of {pool} memory at its peak (largest: {largest}) but "
        f"{_gib(free)} is available{given}; {advice}"
    )
