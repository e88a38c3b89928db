"""The encoder variants: casts, bitsandbytes (medret's own layers), torchao, medret's quantization,
and the bytes each one holds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from gpubench.inputs import load_fp32_model
from gpubench.variants import ARCH, MiB


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def tensor_bytes(t) -> int:
    """Storage bytes of a (possibly quantized / tensor-subclass) tensor, including its scales."""
    import torch

    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        # torchao's tensor subclasses: the sum of the inner tensors (medret never makes these)
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if isinstance(getattr(t, n), torch.Tensor))
    if getattr(t, "quant_state", None) is None and getattr(t, "SCB", None) is None:
        return t.numel() * t.element_size()  # plain: no medret import, whose package needs the carried hydra wheels
    from medret.quant.sizes import tensor_bytes as medret_tensor_bytes  # bitsandbytes scales as evaluate counts them

    return medret_tensor_bytes(t)


def model_bytes(model) -> tuple[int, int]:
    """(all parameters, parameters of the encoder's Linear-like layers)."""
    total = sum(tensor_bytes(p) for p in model.parameters())
    lin = 0
    for name, mod in model.named_modules():
        if name.startswith("encoder.") and hasattr(mod, "weight") and hasattr(mod, "in_features"):
            lin += sum(tensor_bytes(p) for p in mod.parameters(recurse=False))
    return total, lin


def bnb_swap(model, kind: str, compute_dtype, rest_dtype, dev):
    """Replace the encoder's nn.Linear layers by medret's bitsandbytes layers (medret.quant.bnb), quantized
    from the fp32 weights, and cast the rest of the model (biases included) to rest_dtype."""
    import torch
    from torch import nn

    from medret.quant.bnb import replace_linear

    options = SimpleNamespace(
        threshold=6.0,
        compute_dtype=str(compute_dtype or torch.float32).removeprefix("torch."),
        blocksize=64,
        double_quant=False,
    )
    scheme = "bnb_int8" if kind == "int8" else "bnb_nf4"
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    swapped = {n: replace_linear(m, scheme, options, dev) for n, m in linears}  # before the cast: fp32 weights
    model.to(rest_dtype)
    for name, new in swapped.items():
        if new.bias is not None:  # medret keeps fp32 biases; here they follow the rest of the model
            new.bias = nn.Parameter(new.bias.detach().to(rest_dtype), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model.to(dev)


def torchao_config(bits: int):
    if bits == 8:
        try:
            from torchao.quantization import Int8WeightOnlyConfig
        except ImportError:  # torchao < 0.10
            from torchao.quantization import int8_weight_only as Int8WeightOnlyConfig
        try:
            return Int8WeightOnlyConfig(version=2)
        except TypeError:
            return Int8WeightOnlyConfig()
    from torchao.quantization import Int4WeightOnlyConfig

    try:
        from torchao.quantization import Int4PackingFormat

        fmt = Int4PackingFormat.TILE_PACKED_TO_4D
    except ImportError:
        fmt = "tile_packed_to_4d"
    try:  # torch's own tinygemm kernel; the default "plain" format needs the mslk/fbgemm package
        return Int4WeightOnlyConfig(group_size=128, int4_packing_format=fmt)
    except TypeError:
        return Int4WeightOnlyConfig(group_size=128)


def torchao_quantize(model, bits: int) -> str:
    import torchao
    from torchao.quantization import quantize_

    cfg = torchao_config(bits)
    quantize_(model, cfg)
    return f"torchao {torchao.__version__}, {type(cfg).__name__}"


def medret_quantize(name: str, model, wd: Path, cfg: dict, dev):
    """medret's own path (quantize_model, then decode once unless per_forward): returns the model, the packed
    whole-model and Linear bytes (what a saved model holds; decoded-once weights are resident in fp32), a note."""
    from transformers import AutoTokenizer

    from medret.config import QuantConfig
    from medret.quant.apply import decode_once, quantize_model
    from medret.quant.sizes import bytes_by_part

    tok = AutoTokenizer.from_pretrained(ARCH)
    if name == "medret_gptq_nf3":
        q = QuantConfig(name="nf", bits=3, group_size=64, method="gptq", calibration_texts=256)
        calibration = json.loads((wd / "calibration.json").read_text())
    else:
        q = QuantConfig(name="nf", bits=4, group_size=64, embeddings=True)
        calibration = None
    model.to(dev)
    sync(dev)
    t0 = time.perf_counter()
    rep = quantize_model(model, tok, q, calibration, "mean", cfg["max_length"])
    sync(dev)
    quant_s = time.perf_counter() - t0
    parts = bytes_by_part(model)
    n = 0 if name.endswith("per_forward") else decode_once(model)
    resident = sum(bytes_by_part(model).values())
    note = (
        f"medret quantize {quant_s:.1f} s on {dev.type}, {rep['effective_bits_per_param']:.2f} bits/param; "
        f"{n} modules decoded once, resident {resident / MiB:.1f} MB"
    )
    return model, sum(parts.values()), parts["linear"], note


def build_encoder(name: str, wd: Path, cfg: dict, dev):
    """The variant's model on dev: (model, autocast dtype or None, whole-model bytes, Linear bytes, note)."""
    import torch

    note, autocast = "", None
    model = load_fp32_model(wd)
    if name == "fp32":
        model.to(dev)
    elif name == "fp32_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        model.to(dev)
    elif name in ("fp16", "fp16_compile"):
        model.to(dev, torch.float16)
    elif name == "bf16":
        model.to(dev, torch.bfloat16)
    elif name == "fp32_autocast16":
        model.to(dev)
        autocast = torch.float16
    elif name in ("bnb_int8", "bnb_int8_fp32rest"):
        import bitsandbytes as bnb

        rest = torch.float16 if name == "bnb_int8" else torch.float32
        model = bnb_swap(model, "int8", None, rest, dev)
        note = f"bitsandbytes {bnb.__version__}"
    elif name.startswith("bnb_nf4"):
        import bitsandbytes as bnb

        dt_ = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name.rsplit("_", 1)[1]]
        model = bnb_swap(model, "nf4", dt_, dt_, dev)
        note = f"bitsandbytes {bnb.__version__}"
    elif name.startswith("ao_int"):
        model.to(dev, torch.bfloat16)
        note = torchao_quantize(model, 8 if name.startswith("ao_int8") else 4)
    elif name.startswith("medret_"):
        model, total_b, lin_b, note = medret_quantize(name, model, wd, cfg, dev)
        return model, torch.float16 if dev.type == "cuda" else None, total_b, lin_b, note
    else:
        raise ValueError(name)
    return model, autocast, *model_bytes(model), note
