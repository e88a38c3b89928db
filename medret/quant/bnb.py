"""bitsandbytes schemes by module replacement (works for asymmetric pairs and sentence-transformers dirs)."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from medret.errors import InputError
from medret.quant.registry import Scheme, register

log = logging.getLogger(__name__)

BNB_DEVICES = ("cpu", "cuda", "xpu")
FOUR_BIT_OPTIONS = ("blocksize", "double_quant", "compute_dtype")
register(Scheme("bnb_int8", "bnb", bits=8, options=("threshold",)))
register(Scheme("bnb_nf4", "bnb", bits=4, options=FOUR_BIT_OPTIONS))
register(Scheme("bnb_fp4", "bnb", bits=4, options=FOUR_BIT_OPTIONS))


EMBEDDING_BLOCKSIZE = 64  # bitsandbytes' EmbeddingNF4 / EmbeddingFP4 take no block size: theirs


def check_row_blocks(
    widths: dict[str, int], blocksize: int, device: torch.device, architecture: str, option: str | None = None
) -> None:
    """bitsandbytes 0.50's CPU 4-bit kernels lay the blocks along each row, its quantizer along the flattened
    weight: a row width (a linear's in_features, an embedding's dim) that is not a multiple of the block size
    decodes to wrong weights (measured: 9-13 dB SQNR instead of NF4's 21). ``widths``: module -> row width;
    ``option``: what sets the block size (quant.blocksize unless given). Rows wider than a block (a real model
    with quant.blocksize=256 over 384 inputs) are an error; rows shorter than a block (toy models) a warning."""
    if device.type != "cpu":
        return
    off = {n: w for n, w in widths.items() if w % blocksize}
    if not off:
        return
    name, width = next(iter(off.items()))
    if option is None:
        option = f"quant.blocksize={blocksize}"
        fits = [b for b in (4096, 2048, 1024, 512, 256, 128, 64, 32) if all(w % b == 0 for w in widths.values())]
        hint = f"quant.blocksize={fits[0]} divides them all" if fits else "no bitsandbytes block size divides them all"
    else:
        hint = "a custom scheme (quant=nf) stores the table exactly as asked"
    what = (
        f"bitsandbytes' CPU 4-bit kernels decode wrong weights when a row ({name} of this {architecture} model: "
        f"{width}, and {len(off) - 1} more) is not a multiple of the block size ({blocksize}); {hint}, or run on CUDA"
    )
    if any(w > blocksize for w in off.values()):
        raise InputError(f"{option}: {what}")
    log.warning("%s: %s", option, what)


def replace_linear(lin: nn.Linear, scheme: str, cfg, device: torch.device) -> nn.Module:
    import bitsandbytes as bnb

    has_bias = lin.bias is not None
    w = lin.weight.data.detach().to("cpu", torch.float32)
    if scheme == "bnb_int8":
        mod = bnb.nn.Linear8bitLt(
            lin.in_features, lin.out_features, bias=has_bias, has_fp16_weights=False, threshold=cfg.threshold
        )
        mod.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        quant_type = scheme.removeprefix("bnb_")
        mod = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=has_bias,
            compute_dtype=getattr(torch, cfg.compute_dtype),
            quant_type=quant_type,
            compress_statistics=cfg.double_quant,
        )
        mod.weight = bnb.nn.Params4bit(
            w, requires_grad=False, quant_type=quant_type, blocksize=cfg.blocksize, compress_statistics=cfg.double_quant
        )
    if has_bias:
        mod.bias = nn.Parameter(lin.bias.data.detach().float().clone(), requires_grad=False)
    return mod.to(device)  # the move to a device is what quantizes the weight in bitsandbytes


def probe_compute_dtype(mod: nn.Module, w: torch.Tensor) -> str:
    """Which precision the 4-bit kernel really used: compare against fp32 and bf16 references."""
    import bitsandbytes.functional as bf

    dev = mod.weight.device
    x = torch.randn(8, mod.in_features, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode():
        out = mod(x.to(torch.float32)).float()
        deq = bf.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
        ref = {
            "float32": x @ deq.T,
            "bfloat16": (x.bfloat16() @ deq.bfloat16().T).float(),
            "float16": (x.half() @ deq.half().T).float() if dev.type == "cuda" else None,
        }
        if mod.bias is not None:
            ref = {k: None if v is None else v + mod.bias.float() for k, v in ref.items()}
    err = {k: (out - v).abs().max().item() for k, v in ref.items() if v is not None}
    return min(err, key=err.get)


def dequantized_weight(mod: nn.Module) -> torch.Tensor:
    """The float weight a bitsandbytes module computes with, for per-layer error."""
    import bitsandbytes.functional as bf

    if hasattr(mod.weight, "quant_state") and mod.weight.quant_state is not None:
        data, qs = mod.weight.data, mod.weight.quant_state
        if getattr(qs, "packing_format_for_cpu", False):
            # The CPU kernel repacks the weight on its first eval forward (bnb 0.50); unpack a copy with
            # bnb's own inverse and leave the module as it is. Private API: there is no public one.
            data, qs = bf._convert_weight_packed_for_cpu_inverse(data.clone(), copy.deepcopy(qs))
        return bf.dequantize_4bit(data, qs).float().cpu()
    scb = mod.weight.SCB if mod.weight.SCB is not None else mod.state.SCB  # moves to state after a forward
    return (mod.weight.data.float() * scb.float()[:, None] / 127.0).cpu()
