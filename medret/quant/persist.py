"""Save a custom-quantized encoder as packed safetensors, and load it back without re-quantizing.

The folder is an HF dir (config.json, tokenizer) plus ``model.safetensors`` holding the packed
codes, codebooks, scales and outliers, ``medret_quant.json`` naming the quantized modules, and the
sentence-transformers files that carry pooling, normalisation and max length.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from medret.errors import InputError
from medret.models.st_files import write_sentence_transformers_files
from medret.quant.linear import QuantLinear
from medret.quant.state import QuantState

MANIFEST = "medret_quant.json"


def is_quantized_dir(path: str) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _save_encoder(encoder, out: Path, quant_info: dict) -> None:
    modules = {}
    for name, mod in encoder.model.named_modules():
        if isinstance(mod, QuantLinear):
            present = {n: list(getattr(mod, n).shape) for n in QuantState.TENSORS if getattr(mod, n) is not None}
            dtypes = {n: str(getattr(mod, n).dtype).removeprefix("torch.") for n in present}
            modules[name] = {
                "in": mod.in_features,
                "out": mod.out_features,
                "bits": mod.bits,
                "group_size": mod.group_size,
                "bias": mod.bias is not None,
                "tensors": present,
                "dtypes": dtypes,
            }
        elif type(mod).__module__.startswith("bitsandbytes"):
            raise InputError("quant.save_dir: bitsandbytes models are not saved by medret (only custom schemes)")
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        encoder.model.config.save_pretrained(tmp)
        encoder.tokenizer.save_pretrained(tmp)
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        s = encoder.settings
        write_sentence_transformers_files(tmp, s.pooling, s.normalize, s.max_length, encoder.dim)
        info = {k: v for k, v in quant_info.items() if k != "layers"}
        (tmp / MANIFEST).write_text(json.dumps({"quant": info, "modules": modules}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_quantized(retriever, out_dir: Path, quant_info: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if retriever.query.model is retriever.doc.model:
        _save_encoder(retriever.doc, out_dir, quant_info)
    else:
        out_dir.mkdir(exist_ok=True)
        _save_encoder(retriever.doc, out_dir / "doc_encoder", quant_info)
        _save_encoder(retriever.query, out_dir / "query_encoder", quant_info)
    return out_dir


def load_quantized(path: str, trust_remote_code: bool = False) -> torch.nn.Module:
    root = Path(path)
    manifest = json.loads((root / MANIFEST).read_text())
    model = AutoModel.from_config(AutoConfig.from_pretrained(root, trust_remote_code=trust_remote_code))
    modules = dict(model.named_modules())
    for name, spec in manifest["modules"].items():
        if name not in modules:
            raise InputError(f"{root / MANIFEST}: module {name!r} not in the model built from config.json")
        parent_name, _, attr = name.rpartition(".")
        mod = QuantLinear(spec["in"], spec["out"], spec["bits"], spec["group_size"], spec["bias"])
        mod.allocate(spec["tensors"], spec["dtypes"])
        setattr(modules[parent_name] if parent_name else model, attr, mod)
    model.load_state_dict(load_file(str(root / "model.safetensors")), strict=True)
    return model.eval()
