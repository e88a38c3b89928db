"""LoRA adapters (peft) over a quantized encoder, for QLoRA: attach, save/load adapter-only, merge.

peft has LoRA layers for bitsandbytes ``Linear4bit``/``Linear8bitLt``; medret's packed ``QuantLinear``
is registered as a peft custom module, so the custom 2-8 bit schemes get adapters too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import Linear as PeftLoraLinear
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from torch import nn

from medret.errors import InputError
from medret.quant.bnb import dequantized_weight
from medret.quant.linear import QuantLinear
from medret.quant.state import dequantize
from medret.storage import atomic_dir, digest

ADAPTER_META = "medret_adapter.json"
ADAPTER = "default"


class LoraQuantLinear(PeftLoraLinear):
    """peft's LoRA linear over a packed ``QuantLinear``, which has no dense ``weight`` to size it by."""

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features


def attach_lora(model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float) -> int:
    """LoRA on the named (quantized) linears; everything else frozen. Returns trainable parameters."""
    import bitsandbytes as bnb

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    config._register_custom_module({QuantLinear: LoraQuantLinear})
    mods = list(model.modules())
    # peft picks its bitsandbytes LoRA layers (which know how to merge) from these flags
    model.is_loaded_in_4bit = any(isinstance(m, bnb.nn.Linear4bit) for m in mods)
    model.is_loaded_in_8bit = any(isinstance(m, bnb.nn.Linear8bitLt) for m in mods)
    for m in mods:
        if isinstance(m, bnb.nn.Linear4bit) and hasattr(m, "support_avx512bf16_for_cpu"):
            # bnb's CPU kernel repacks a 4-bit weight (absmax to bf16) on its first eval forward: the base would
            # change at the first dev evaluation, and a resumed run would train on another. Keep one layout.
            m.support_avx512bf16_for_cpu = False
    with _device_hints(model):
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        n += p.numel() if p.requires_grad else 0
    return n


@contextlib.contextmanager
def _device_hints(model: nn.Module) -> Iterator[None]:
    """peft puts each new adapter on its base layer's device, read from ``weight``/``qweight`` or else the first
    parameter: a packed QuantLinear without bias (ModernBERT's bias-free Wqkv/Wi/Wo) has none of them and peft
    stops with a bare StopIteration. Lend such a layer its packed codes as ``qweight`` while adapters go in."""
    lent = []
    for m in model.modules():
        if isinstance(m, QuantLinear) and not hasattr(m, "qweight") and m.bias is None:
            m.qweight = next(m.buffers())
            lent.append(m)
    try:
        yield
    finally:
        for m in lent:
            del m.qweight


def lora_targets(model: nn.Module) -> list[str]:
    """The quantized linears of a model: where the adapters go."""
    import bitsandbytes as bnb

    kinds = (QuantLinear, bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    res = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    missing = [k for k in res.missing_keys if "lora_" in k]
    if missing or res.unexpected_keys:
        raise InputError(
            f"adapter does not fit this model: {len(missing)} LoRA tensors missing, "
            f"{len(res.unexpected_keys)} unexpected (e.g. {(missing + res.unexpected_keys)[0]})"
        )


def quant_digest(quant: dict) -> str:
    return digest(quant, 16)


def save_adapters(models: list[nn.Module], out: Path, meta: dict) -> Path:
    """``adapter{i}.safetensors`` per distinct encoder and ``medret_adapter.json`` (r, alpha, targets, quant)."""
    with atomic_dir(out) as tmp:
        save_adapter_files(models, tmp)
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def save_adapter_files(models: list[nn.Module], folder: Path) -> None:
    """``adapter{i}.safetensors`` per distinct encoder (a training checkpoint holds only these)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(models):
        save_file(adapter_state(m), str(folder / f"adapter{i}.safetensors"))


def load_adapter_files(models: list[nn.Module], folder: Path) -> None:
    for i, m in enumerate(models):
        load_adapter_state(m, load_file(str(folder / f"adapter{i}.safetensors")))


def load_adapters(models: list[nn.Module], folder: Path, quant: dict) -> dict:
    """Attach and load saved adapters onto already-quantized encoders (same scheme as in training)."""
    meta_file = Path(folder) / ADAPTER_META
    if not meta_file.is_file():
        raise InputError(f"model.adapter={folder}: no {ADAPTER_META} (expected a train=qlora best_adapter dir)")
    meta = json.loads(meta_file.read_text())
    if meta["quant_digest"] != quant_digest(quant):
        raise InputError(
            f"model.adapter={folder}: trained over quant {meta['quant']}, but this run quantizes "
            f"with {quant}; set the same quant"
        )
    if len(meta["targets"]) != len(models):
        raise InputError(
            f"model.adapter={folder}: adapters for {len(meta['targets'])} encoders, this model has {len(models)}"
        )
    h = hashlib.sha256()
    for i, m in enumerate(models):
        file = Path(folder) / f"adapter{i}.safetensors"
        h.update(file.read_bytes())
        attach_lora(m, meta["targets"][i], meta["r"], meta["alpha"], 0.0)
        load_adapter_state(m, load_file(str(file)))
        m.eval()
    return {**meta, "digest": h.hexdigest()[:16]}


def _dense_weight(base: nn.Module) -> torch.Tensor:
    if isinstance(base, QuantLinear):
        return dequantize(base.state())
    return dequantized_weight(base)


def merge_to_dense(model: nn.Module) -> int:
    """Replace each LoRA-wrapped quantized linear with an fp32 ``nn.Linear`` of weight
    dequant(W) + B·A·scale. The result is an ordinary model: export it, and re-quantize it with the same
    scheme to deploy (peft's own merge would re-quantize in place, and only for bitsandbytes)."""
    lora = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, mod in lora:
        base = mod.get_base_layer()
        w = _dense_weight(base).float().cpu() + mod.get_delta_weight(ADAPTER).detach().float().cpu()
        dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        dense.weight.data = w
        if base.bias is not None:
            dense.bias.data = base.bias.detach().float().cpu().clone()
        model.set_submodule(name, dense.to(next(mod.parameters()).device), strict=True)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if hasattr(model, flag):
            delattr(model, flag)
    return len(lora)
