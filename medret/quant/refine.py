"""Refinement after rounding: the codes stay, the float numbers around them are fitted so that the quantized
encoder's token outputs match the fp32 encoder's on the unlabelled calibration texts (label-free output
reconstruction, the post-training family of BRECQ, OmniQuant's learned clipping and norm tweaking).

Fitted: each packed layer's scales, offsets, per-group codebooks and outliers (stored fp16: rounded back when
written), the biases of the quantized layers and every LayerNorm. A shared fixed-level codebook (nf, log) and
the codes themselves are not touched, so what is stored, and its effective bits, are those of the rounding.
The targets are taken from the fp32 model before any layer is rounded: no second copy of the model is kept.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from medret.quant.linear import QuantLinear
from medret.quant.packing import unpack_codes
from medret.quant.state import QuantState, decode, fitted_codebook

FLOATS = ("scale", "offset", "outlier_val")  # a packed layer's stored floats that refinement fits


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    hidden: torch.Tensor  # the fp32 model's last hidden state [batch, tokens, dim]


@torch.no_grad()
def targets(model: nn.Module, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> list[Batch]:
    """The fp32 model's token outputs on ``texts`` (length-sorted batches: little padding)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ordered = sorted(texts, key=len)
    out = []
    for s in range(0, len(ordered), batch_size):
        enc = tokenizer(
            ordered[s : s + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        out.append(Batch(dict(enc), model(**enc).last_hidden_state.float()))
    model.train(was_training)
    return out


class _Refining(nn.Module):
    """A QuantLinear during refinement: its codes unpacked once, its stored floats as parameters."""

    def __init__(self, packed: QuantLinear):
        super().__init__()
        self.packed = packed
        st = packed.state()
        self.register_buffer("codes", unpack_codes(st.planes, st.bits, st.numel).view(-1, st.group_size).long())
        tuned = {n: getattr(st, n) for n in FLOATS if getattr(st, n) is not None}
        if fitted_codebook(st):  # k-means levels are fitted floats; nf/log/uniform levels stay fixed
            tuned["codebook"] = st.codebook
        self.tuned = nn.ParameterDict({n: nn.Parameter(t.detach().float().clone()) for n, t in tuned.items()})
        self.bias = packed.bias

    def weight(self) -> torch.Tensor:
        st = self.packed.state()
        parts = {n: getattr(st, n) for n in QuantState.TENSORS}
        parts.update(dict(self.tuned.items()))
        return decode(QuantState(st.shape, st.bits, st.group_size, **parts), self.codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)

    def write_back(self) -> QuantLinear:
        for name, p in self.tuned.items():
            setattr(self.packed, name, p.detach().to(torch.float16).contiguous())
        return self.packed


def token_loss(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of 1 - cosine to the fp32 output: scale-free, and each token a constraint."""
    cos = F.cosine_similarity(hidden.float(), target, dim=-1)
    m = mask.to(cos.dtype)
    return ((1 - cos) * m).sum() / m.sum()


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch]) -> float:
    was_training = model.training
    model.eval()
    total = sum(
        token_loss(model(**b.inputs).last_hidden_state, b.hidden, b.inputs["attention_mask"]).item() for b in batches
    )
    model.train(was_training)
    return total / len(batches)


def fit(model: nn.Module, batches: list[Batch], steps: int, lr: float, seed: int = 0) -> dict:
    """``steps`` Adam steps over the batches (seeded order, cosine-decayed ``lr``); returns the calibration loss
    (mean 1 - token cosine to fp32) before and after, how many numbers were fitted and the seconds a step took.
    The model's packed layers hold the fitted floats (rounded to what they store) afterwards, unless the fit ended
    with a higher calibration loss than the rounding's (too few steps for ``lr``, or a rounding already at fp32's
    outputs): then the rounding's floats are put back, ``reverted`` is true and ``loss_fitted`` is the fit's loss."""
    wrapped = {n: _Refining(m) for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not wrapped:
        return {"steps": 0, "fitted_params": 0}
    before = mean_loss(model, batches)  # only when there is something to fit: a whole pass over the texts
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)
    for name, w in wrapped.items():
        model.set_submodule(name, w, strict=True)
    params = [p for w in wrapped.values() for p in w.tuned.values()]
    params += [w.bias for w in wrapped.values() if w.bias is not None]
    params += [p for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    stored = {name: {k: getattr(w.packed, k) for k in w.tuned} for name, w in wrapped.items()}  # write_back replaces
    n_tuned = sum(len(w.tuned) for w in wrapped.values())
    dense = [(p, p.detach().clone()) for p in params[n_tuned:]]  # biases and norms: updated in place
    was_training = model.training
    model.eval()  # no dropout: the targets are the fp32 model's eval outputs
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    rng = random.Random(seed)
    order: list[int] = []
    # minutes at BERT-base size: steps, ETA and the loss (a running mean of the batches' losses), cleared at the end
    bar = tqdm(total=steps, desc="refine", unit="step", mininterval=2.0, leave=False, postfix={"loss": f"{before:.4g}"})
    running, t0 = before, time.perf_counter()
    try:
        for _ in range(steps):
            if not order:
                order = rng.sample(range(len(batches)), len(batches))
            b = batches[order.pop()]
            loss = token_loss(model(**b.inputs).last_hidden_state, b.hidden, b.inputs["attention_mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running = 0.9 * running + 0.1 * loss.item()
            bar.set_postfix(loss=f"{running:.4g}", refresh=False)
            bar.update(1)
    finally:
        seconds = time.perf_counter() - t0  # the steps alone (the loss passes before and after are not in it)
        bar.close()
        for name, w in wrapped.items():
            model.set_submodule(name, w.write_back(), strict=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, False))
        model.train(was_training)
    fitted = sum(p.numel() for p in params)
    after = mean_loss(model, batches)
    report = {"steps": steps, "lr": lr, "loss_before": before, "loss_after": after, "fitted_params": fitted}
    report["seconds_per_step"] = seconds / steps if steps else 0.0
    if after > before:  # the fit made the calibration outputs worse: keep the rounding's floats
        for name, floats in stored.items():
            for k, t in floats.items():
                setattr(wrapped[name].packed, k, t)
        with torch.no_grad():
            for p, t in dense:
                p.copy_(t)
        report.update(loss_after=before, loss_fitted=after, reverted=True)
    return report
