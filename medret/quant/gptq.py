"""GPTQ (Frantar et al. 2022): round each weight column to the scheme's own grid and push the rounding
error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

The grid is whatever the scheme fits (uniform, nf, log, companding, k-means, Fisher k-means): when the
pass reaches a group's first column, the scheme's quantize runs on that group's current (error-updated)
weights, and its per-row levels are the rounding targets for the group's columns. The result is one
ordinary QuantState (codes + per-group codebooks, scales, offsets), so storage, packing, save/load and
decoding are those of round-to-nearest. With act-order the columns are visited by decreasing Hessian
diagonal and every group's grid is fitted up front on the original weights ("static groups"): codes stay
in column order and the stored format does not change.

``quantize_layers`` takes each layer's inputs from the calibration texts through the model whose earlier
layers are already quantized, true-sequentially: query/key/value (one shared input, one Hessian), then the
attention output, then the feed-forward layers. Each transformer block is run on the outputs of the
quantized block before it, with that block's own masks and position embeddings (the model is run once, to
the last block, to capture every block's call), every run stopped at the layer being captured; layers outside
the blocks (ELECTRA's embedding projection, a pooler) are captured through the whole model. Under
quant.rotate a layer is rounded in its rotated basis (W R^T against R H R^T, ``medret.quant.rotate``) and the
pass goes on through Q R, the same function in the original basis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from tqdm.auto import tqdm

from medret.errors import InputError
from medret.quant.registry import scheme
from medret.quant.rotate import rotation_for
from medret.quant.select import architecture
from medret.quant.state import QuantState, dequantize, make_state

BLOCK = 128  # lazy batch: columns updated together before the rest of the matrix sees their error


@dataclass
class Grid:
    """The levels one group of columns rounds to: sorted per row, and what each sorted level's code is."""

    levels: torch.Tensor  # [out, L] sorted
    mid: torch.Tensor  # [out, L - 1] midpoints: a weight's level is how many midpoints lie below it
    codes: torch.Tensor  # [out, L] the stored code of each sorted level
    codebook: torch.Tensor  # as fitted: [1 or groups, L]
    scale: torch.Tensor | None  # [groups]
    offset: torch.Tensor | None

    def round(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(nearest level, its stored code) of each row's weight ``w`` [out]; ties as ``nearest_level``."""
        idx = (self.mid < w[:, None]).sum(dim=1, keepdim=True)  # one batched searchsorted per column is slower
        return self.levels.gather(1, idx)[:, 0], self.codes.gather(1, idx)[:, 0]


def fit_grid(w: torch.Tensor, spec, group_size: int, importance: torch.Tensor | None, rows: int) -> Grid:
    """The scheme's own fit on ``w`` (one group per row, per run of whole rows, or one for all rows under tensor
    granularity)."""
    state = scheme(spec.name).quantize(w, spec, group_size, importance)
    cb = state.codebook.float()
    n_groups = w.numel() // group_size
    vals = cb.expand(n_groups, -1)  # the same arithmetic as dequantize, so levels are what decodes
    if state.scale is not None:
        vals = vals * state.scale.float()[:, None]
    if state.offset is not None:
        vals = vals + state.offset.float()[:, None]
    levels, order = vals.repeat_interleave(rows // n_groups, dim=0).sort(dim=1)  # each row its group's levels
    mid = (levels[:, 1:] + levels[:, :-1]) / 2
    return Grid(levels.contiguous(), mid.contiguous(), order, state.codebook, state.scale, state.offset)


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, the row-wise update weights of GPTQ."""
    h = hessian.double().clone()
    dead = h.diagonal() == 0  # inputs never active: any value is exact; keep the factor well posed
    h.diagonal()[dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    inv = torch.cholesky_solve(eye, torch.linalg.cholesky(h))  # ~10x faster than cholesky_inverse on CPU
    return torch.linalg.cholesky(inv, upper=True).float()


def _current(wt, w1, err1, hinv, i1: int, i: int, b: int) -> torch.Tensor:
    """Columns i1+i .. b (permuted order) as [out, cols], with every error so far applied, mid-block included."""
    i2 = i1 + w1.shape[0]
    parts = [w1[i : min(b, i2) - i1]]
    if b > i2:  # beyond the block: the block's pending updates applied now
        parts.append(wt[i2:b] - hinv[i1 : i1 + i, i2:b].T @ err1[:i])
    return torch.cat(parts).T


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec,
    group_size: int,
    importance: torch.Tensor | None = None,
    damp: float = 0.01,
    act_order: bool = False,
) -> QuantState:
    """GPTQ of one [out, in] weight against H = 2 X^T X ([in, in]); ``group_size`` as medret's groups
    (a divisor of in, in itself for channel, a multiple of in for rows, out * in for tensor)."""
    out_f, in_f = weight.shape
    cols = min(group_size, in_f)  # columns of one group; a tensor group spans them all
    perm = torch.argsort(hessian.diagonal(), descending=True) if act_order else torch.arange(in_f)
    wt = weight.float()[:, perm].T.contiguous()  # [in, out]: one column of W is one contiguous row
    hinv = inverse_hessian_factor(hessian[perm][:, perm], damp)
    imp = None if importance is None else importance.float()
    grids: list[Grid] = []
    static = act_order or cols == in_f  # a group's first column is column 0: the original weights

    def fit(k: int, current: torch.Tensor) -> None:
        sl = slice(k * cols, (k + 1) * cols)
        grids.append(fit_grid(current, spec, group_size, None if imp is None else imp[:, sl], out_f))

    if static:
        for k in range(in_f // cols):
            fit(k, weight.float()[:, k * cols : (k + 1) * cols])
    codes = torch.zeros(in_f, out_f, dtype=torch.long)
    for i1 in range(0, in_f, BLOCK):
        i2 = min(i1 + BLOCK, in_f)
        w1, err1, h1 = wt[i1:i2].clone(), torch.zeros(i2 - i1, out_f), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if not static and col % cols == 0:  # no act-order: permuted order is column order
                fit(col // cols, _current(wt, w1, err1, hinv, i1, i, i1 + i + cols))
            q, codes[col] = grids[col // cols].round(w1[i])
            err1[i] = (w1[i] - q) / h1[i, i]
            w1[i:].addmm_(h1[i, i:, None], err1[i, None], alpha=-1)  # addr_ is ~30x slower on CPU
        wt[i2:].addmm_(hinv[i1:i2, i2:].T, err1, alpha=-1)
    return _assemble(weight, spec.bits, group_size, codes.T, grids)


def _assemble(weight, bits: int, group_size: int, codes: torch.Tensor, grids: list[Grid]) -> QuantState:
    """One QuantState, groups row-major: group r * n_col_groups + k is row r's k-th run of columns."""
    out_f = weight.shape[0]
    books = [g.codebook for g in grids]
    if len(books) == 1 or all(b.shape[0] == 1 and torch.equal(b, books[0]) for b in books):
        codebook = books[0]  # one run of columns (channel, rows, tensor), or fixed levels shared by every group
    else:
        codebook = torch.stack([b.expand(out_f, -1) for b in books], dim=1).reshape(-1, books[0].shape[1])

    def per_group(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
        return None if parts[0] is None else torch.stack(parts, dim=1).reshape(-1)

    scale, offset = per_group([g.scale for g in grids]), per_group([g.offset for g in grids])
    return make_state(weight, bits, group_size, codes.reshape(-1, group_size), codebook, scale, offset)


def layer_output_error(weight: torch.Tensor, decoded: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): with H = 2 X^T X / tokens, twice the mean over the calibration tokens of
    ||x W^T - x Q^T||^2, without running the layer."""
    d = weight.float() - decoded
    return float(((d @ hessian.float()) * d).sum())


class _Captured(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


@dataclass
class LayerResult:
    state: QuantState
    weight: torch.Tensor  # the original weights (rotated: W R^T, the basis of state), for the error report
    decoded: torch.Tensor  # dequantize(state)
    output_error: float  # calibration ||XW^T - XQ^T||^2 / tokens / out
    output_error_rtn: float  # the same for the scheme's round-to-nearest (what GPTQ is measured against)
    tokens: int


def _batches(tokenizer, texts: list[str], max_length: int, device, batch_size: int = 16) -> list[dict]:
    """Tokenized once, by length (less padding), reused by every stage."""
    ordered = sorted(texts, key=len)
    return [
        tokenizer(
            ordered[s : s + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        for s in range(0, len(ordered), batch_size)
    ]


def _stages(model: nn.Module, names: list[str], batch: dict) -> list[list[str]]:
    """The layers in the order the forward runs them, grouped where they read the same input tensor
    (query, key and value): one Hessian and one capture for each group."""
    fired: list[tuple[str, torch.Tensor]] = []
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: fired.append((n, args[0]))) for n in names
    ]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    stages: list[list[str]] = []
    seen: set[str] = set()
    for i, (n, x) in enumerate(fired):
        if n in seen:
            continue  # a layer run twice in one forward: its first input is the one captured
        seen.add(n)
        if i and x is fired[i - 1][1] and stages:
            stages[-1].append(n)
        else:
            stages.append([n])
    missing = set(names) - seen
    if missing:
        some = ", ".join(sorted(missing)[:3]) + (" ..." if len(missing) > 3 else "")
        raise InputError(
            f"quant.method=gptq on {architecture(model)}: {len(missing)} selected layer(s) never run in the "
            f"encoder's forward ({some}), so they have no calibration inputs; leave them out with quant.exclude "
            "or use quant.method=rtn"
        )
    return stages


def _hessian(lin: nn.Module, runs: list[Callable[[], object]], masks: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """H = 2 X^T X / tokens over the non-padding tokens that reach ``lin`` in each run (stopped there)."""
    h = torch.zeros(lin.in_features, lin.in_features, dtype=torch.float32, device=lin.weight.device)
    count, mask = [0], [masks[0]]

    def capture(_m, args):
        x = args[0]
        if x.dim() == 3 and x.shape[:2] == mask[0].shape:
            x = x[mask[0].bool()]
        x = x.reshape(-1, x.shape[-1]).float()
        h.addmm_(x.T, x)
        count[0] += x.shape[0]
        raise _Captured

    hook = lin.register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            for run, m in zip(runs, masks):
                mask[0] = m
                try:
                    run()
                except _Captured:
                    pass
    finally:
        hook.remove()
    return h * (2.0 / max(count[0], 1)), count[0]


def _blocks(model: nn.Module, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The transformer blocks (children of the ModuleList holding most of ``names``) and each layer's block."""
    best: tuple[list[str], dict[str, str]] = ([], {})
    for list_name, mods in model.named_modules():
        if not isinstance(mods, nn.ModuleList) or not list_name:
            continue
        blocks = [f"{list_name}.{i}" for i in range(len(mods))]
        of = {n: b for n in names for b in blocks if n.startswith(b + ".")}
        if len(of) > len(best[1]):
            best = (blocks, of)
    return best


def _with_hidden(args: list, kwargs: dict, hidden) -> tuple[list, dict]:
    """A block's call with its hidden states (the first positional argument, or ``hidden_states=``) replaced."""
    if args:
        return [hidden, *args[1:]], kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _block_inputs(model: nn.Module, blocks: list[nn.Module], batches: list[dict]) -> list[list[tuple[list, dict]]]:
    """What the model passes to each of ``blocks`` for each batch, in one forward stopped after the last block:
    the first block's whole call, the others' without their hidden states (those come from replaying the
    quantized block before). Each block keeps its own extra arguments: ModernBERT alternates global and
    sliding-window layers, each with its own attention mask and rotary embeddings."""
    calls: list[list[tuple[list, dict]]] = [[] for _ in blocks]

    def grab(k: int, _m, args, kwargs):
        args, kwargs = list(args), dict(kwargs)
        calls[k].append((args, kwargs) if k == 0 else _with_hidden(args, kwargs, None))
        if k == len(blocks) - 1:
            raise _Captured

    hooks = [b.register_forward_pre_hook(partial(grab, k), with_kwargs=True) for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for b in batches:
                try:
                    model(**b)
                except _Captured:
                    pass
    finally:
        for h in hooks:
            h.remove()
    return calls


def _replay(block: nn.Module, inputs: list[tuple[list, dict]], following: list[tuple[list, dict]]):
    """The next block's calls: this (quantized) block's output as hidden states, with the next block's own
    extra arguments (``following``, as the model passed them)."""
    out = []
    with torch.no_grad():
        for (args, kwargs), (next_args, next_kwargs) in zip(inputs, following):
            y = block(*args, **kwargs)
            out.append(_with_hidden(next_args, next_kwargs, y[0] if isinstance(y, tuple) else y))
    return out


@dataclass
class _Job:
    specs: dict
    group_sizes: dict[str, int]
    importance: dict[str, torch.Tensor]
    masks: list[torch.Tensor]
    results: dict[str, LayerResult]
    bar: tqdm  # layers done, of all the pass rounds


def _quantize_stage(model: nn.Module, stage: list[str], runs: list[Callable[[], object]], job: _Job) -> None:
    """The layers of one stage share an input: one Hessian, then GPTQ of each; weights replaced in place."""
    hessian, tokens = _hessian(model.get_submodule(stage[0]), runs, job.masks)
    hessian = hessian.cpu()
    for name in stage:
        lin, spec, gs = model.get_submodule(name), job.specs[name], job.group_sizes[name]
        w, h = lin.weight.detach().float().cpu(), hessian
        rot = rotation_for(name, w.shape[1], spec)
        if rot is not None:  # W R^T against the Hessian of R x: R H R^T (output errors are the same there)
            w, h = rot.apply(w), rot.hessian(hessian)
        imp = job.importance.get(name)
        imp = None if imp is None else imp.float().cpu()
        state = gptq_quantize(w, h, spec, gs, imp, spec.gptq_damp, spec.act_order)
        q, rtn = dequantize(state), dequantize(scheme(spec.name).quantize(w, spec, gs, imp))
        per = 2.0 * w.shape[0]  # H = 2 X^T X / tokens: per token and output
        errors = layer_output_error(w, q, h) / per, layer_output_error(w, rtn, h) / per
        job.results[name] = LayerResult(state, w, q, *errors, tokens)
        # the later layers' inputs come through this one as rounded, in the original basis: Q R on x
        lin.weight.data = (q if rot is None else rot.apply_t(q)).to(lin.weight.dtype).to(lin.weight.device)
        job.bar.set_postfix_str(name, refresh=False)
        job.bar.update(1)


def _quantize_blocks(model: nn.Module, stages: list[list[str]], blocks: list[str], of: dict, batches, job) -> None:
    """Stages inside consecutive transformer blocks: each block is run on the outputs of the quantized
    block before it (every block's call captured once, at the start), not the whole model again."""
    first, last = blocks.index(of[stages[0][0]]), blocks.index(of[stages[-1][0]])
    calls = _block_inputs(model, [model.get_submodule(b) for b in blocks[first : last + 1]], batches)
    inputs = calls[0]
    for k in range(first, last + 1):
        block = model.get_submodule(blocks[k])
        runs = [partial(block, *a, **kw) for a, kw in inputs]
        for stage in (s for s in stages if of[s[0]] == blocks[k]):
            _quantize_stage(model, stage, runs, job)
        if k < last:
            inputs = _replay(block, inputs, calls[k + 1 - first])
            calls[k + 1 - first] = []  # held once, as ``inputs``


def quantize_layers(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    specs: dict,
    group_sizes: dict[str, int],
    max_length: int,
    importance: dict[str, torch.Tensor],
) -> dict[str, LayerResult]:
    """GPTQ of every layer in ``specs`` in forward order; each layer's Hessian comes from inputs through
    the layers before it as already quantized (their weights are replaced in place as the pass goes)."""
    batches = _batches(tokenizer, texts, max_length, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    stages = _stages(model, list(specs), batches[0])
    blocks, of = _blocks(model, list(specs))
    # minutes at BERT-base size: the layers done and an ETA, cleared when the pass ends (as medret's other bars)
    bar = tqdm(total=len(specs), desc="gptq", unit="layer", mininterval=2.0, leave=False)
    job = _Job(specs, group_sizes, importance, [b["attention_mask"] for b in batches], {}, bar)
    pos = 0
    with bar:
        while pos < len(stages):
            if stages[pos][0] not in of:  # outside the blocks (e.g. a pooler): through the whole model
                _quantize_stage(model, stages[pos], [partial(model, **b) for b in batches], job)
                pos += 1
                continue
            end = pos
            while end < len(stages) and stages[end][0] in of:
                end += 1
            _quantize_blocks(model, stages[pos:end], blocks, of, batches, job)
            pos = end
    model.train(was_training)
    return job.results
