"""Packed storage of a custom-quantized model: what a saved folder's manifest says, and loading it back
without re-quantizing.

A saved folder is an HF dir (config.json, tokenizer) plus ``model.safetensors`` holding the packed
codes, codebooks, scales and outliers, and ``medret_quant.json`` naming the quantized modules (and, under
quant.rotate, each rotated layer's seed and sizes: its packed module is ``<name>.inner``).
Writing the folder is ``medret.models.saving``'s job (it owns model folders); this module only
describes and rebuilds the quantized modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from medret.errors import InputError
from medret.quant import rotate
from medret.quant.embedding import QuantEmbedding, TieredEmbedding
from medret.quant.linear import QuantLinear
from medret.quant.state import QuantState

MANIFEST = "medret_quant.json"


def is_quantized_dir(path: str) -> bool:
    return (Path(path) / MANIFEST).is_file()


def packed_modules(model: torch.nn.Module) -> dict[str, dict]:
    """The manifest entry of every QuantLinear: shapes and dtypes to rebuild it before loading."""
    modules = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLinear, QuantEmbedding)):
            present = {n: list(getattr(mod, n).shape) for n in QuantState.TENSORS if getattr(mod, n) is not None}
            shape = mod.state().shape
            modules[name] = {
                "kind": "embedding" if isinstance(mod, QuantEmbedding) else "linear",
                "in": shape[1],
                "out": shape[0],
                "bits": mod.bits,
                "group_size": mod.group_size,
                "bias": getattr(mod, "bias", None) is not None,
                "padding_idx": getattr(mod, "padding_idx", None),
                "tensors": present,
                "dtypes": {n: str(getattr(mod, n).dtype).removeprefix("torch.") for n in present},
            }
        elif isinstance(mod, TieredEmbedding):
            modules[name] = mod.manifest_entry()
        elif type(mod).__module__.startswith("bitsandbytes"):
            raise InputError("quant.save_dir: bitsandbytes models are not saved by medret (only custom schemes)")
    return modules


def manifest(
    model: torch.nn.Module, quant_info: dict, source: dict | None = None, dropped: tuple[str, ...] = ()
) -> str:
    """``source``: the fp32 model the packed one was made from (``path``, ``revision``, ``weights`` digest), so
    that evaluate can judge the saved model against it; ``dropped``: modules taken off the model (an unread
    pooler), which loading sets to None before the stored tensors are read."""
    info = {k: v for k, v in quant_info.items() if k != "layers"}
    rotated = rotate.rotations(model)
    extra = {"rotations": rotated} if rotated else {}
    if source:
        extra["source"] = source
    if dropped:  # modules the model's config builds but no forward medret runs reads (a pooler): not stored
        extra["dropped"] = list(dropped)
    return json.dumps({"quant": info, "modules": packed_modules(model), **extra}, indent=1)


def saved_manifest(path: str) -> dict:
    """A saved folder's manifest as written (quant info, modules, source)."""
    return json.loads((Path(path) / MANIFEST).read_text())


def load_quantized(path: str, trust_remote_code: bool = False) -> torch.nn.Module:
    root = Path(path)
    saved = saved_manifest(path)
    model = AutoModel.from_config(AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code))
    for name in saved.get("dropped", []):
        if not isinstance(getattr(model, name, None), torch.nn.Module):
            raise InputError(
                f"{root / MANIFEST}: dropped module {name!r} is not a module of the model built from config.json"
            )
        setattr(model, name, None)
    rotate.restore(model, saved.get("rotations", {}), str(root / MANIFEST))
    modules = dict(model.named_modules())
    for name, spec in saved["modules"].items():
        if name not in modules:
            raise InputError(f"{root / MANIFEST}: module {name!r} not in the model built from config.json")
        if spec.get("kind") == "tiered_embedding":
            model.set_submodule(name, TieredEmbedding.from_manifest(spec), strict=True)
            continue
        if spec.get("kind") == "embedding":
            mod = QuantEmbedding(spec["out"], spec["in"], spec["bits"], spec["group_size"], spec["padding_idx"])
        else:
            mod = QuantLinear(spec["in"], spec["out"], spec["bits"], spec["group_size"], spec["bias"])
        mod.allocate(spec["tensors"], spec["dtypes"])
        model.set_submodule(name, mod, strict=True)
    model.load_state_dict(load_file(str(root / "model.safetensors")), strict=True)
    return model.eval()
