"""Runtime options: which modes each runtime has, and the cheap checks run before any model loads."""

from __future__ import annotations

import importlib.util
from typing import Any

from medret.config import RuntimeConfig
from medret.errors import InputError

# name -> the quantize modes it takes; the first is the unquantized one
MODES: dict[str, tuple[str, ...]] = {
    "torch": ("none",),
    "onnx": ("none", "dynamic_int8", "static_int8"),
    "openvino": ("none", "int8", "int4_weights"),
}
PROVIDERS = ("auto", "cpu", "cuda")
PRECISIONS = {"torch": ("f32",), "onnx": ("f32",), "openvino": ("f32", "bf16")}
INT4_MODES = ("int4_sym", "int4_asym", "nf4")
CALIBRATED = {("onnx", "static_int8"), ("openvino", "int8")}
# torch's ONNX exporter (dynamo, the one that traces transformers 5 correctly) writes opset 18 or later
MIN_OPSET = 18


def as_config(cfg: Any) -> RuntimeConfig:
    """A RuntimeConfig from itself, an OmegaConf node or a plain mapping."""
    if isinstance(cfg, RuntimeConfig):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RuntimeConfig), cfg))


def needs_calibration(cfg: RuntimeConfig) -> bool:
    return (cfg.name, cfg.quantize) in CALIBRATED


def required_modules(cfg: RuntimeConfig) -> list[str]:
    """Python modules a runtime/mode imports (export goes through ONNX for both runtimes)."""
    if cfg.name == "torch":
        return []
    mods = ["onnx", "onnxscript"]
    if cfg.name == "onnx":
        mods.append("onnxruntime")
    else:
        mods.append("openvino")
        if cfg.quantize != "none":
            mods.append("nncf")
    return mods


def missing_modules(cfg: RuntimeConfig) -> list[str]:
    return [m for m in required_modules(cfg) if importlib.util.find_spec(m) is None]


def validate(cfg: Any) -> None:
    """Raise InputError (one line) for a bad runtime config or a missing library; loads no model."""
    cfg = as_config(cfg)
    if cfg.name not in MODES:
        raise InputError(f"runtime.name={cfg.name!r}: expected one of {', '.join(MODES)}")
    modes = MODES[cfg.name]
    if cfg.quantize not in modes:
        hint = " (quantize in PyTorch with quant=...)" if cfg.name == "torch" else ""
        raise InputError(f"runtime.quantize={cfg.quantize!r}: runtime={cfg.name} takes {' | '.join(modes)}{hint}")
    if cfg.precision not in PRECISIONS[cfg.name]:
        raise InputError(
            f"runtime.precision={cfg.precision!r}: runtime={cfg.name} takes {' | '.join(PRECISIONS[cfg.name])}"
        )
    if cfg.provider not in PROVIDERS:
        raise InputError(f"runtime.provider={cfg.provider!r}: expected one of {', '.join(PROVIDERS)}")
    if cfg.name == "openvino" and cfg.provider == "cuda":
        raise InputError("runtime.provider=cuda: runtime=openvino runs on the CPU here (use auto or cpu)")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise InputError(f"runtime.threads={cfg.threads!r}: expected a positive integer or null (all cores)")
    if needs_calibration(cfg) and cfg.calibration_texts < 1:
        raise InputError(
            f"runtime.calibration_texts={cfg.calibration_texts}: runtime={cfg.name} quantize={cfg.quantize} "
            "needs at least 1"
        )
    if cfg.name == "openvino" and cfg.quantize == "int4_weights":
        if cfg.int4_mode not in INT4_MODES:
            raise InputError(f"runtime.int4_mode={cfg.int4_mode!r}: expected one of {', '.join(INT4_MODES)}")
        if cfg.group_size != -1 and cfg.group_size < 2:
            raise InputError(f"runtime.group_size={cfg.group_size}: expected -1 (per channel) or at least 2")
        if not 0.0 < cfg.ratio <= 1.0:
            raise InputError(f"runtime.ratio={cfg.ratio}: expected 0 < ratio <= 1")
    if cfg.name != "torch" and not 7 <= cfg.opset <= 30:
        raise InputError(f"runtime.opset={cfg.opset}: expected an ONNX opset in 7..30")
    missing = missing_modules(cfg)
    if missing:
        pkgs = " ".join(missing)  # each module's pip distribution has the same name
        raise InputError(
            f"runtime={cfg.name}: the {', '.join(missing)} package(s) are not installed; pip install {pkgs}"
        )
    if cfg.name == "onnx" and cfg.provider == "cuda":
        import onnxruntime as ort
        import torch

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(
                "runtime.provider=cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu "
                "(in place of onnxruntime)"
            )
        if not torch.cuda.is_available():
            raise InputError("runtime.provider=cuda: CUDA is not available on this machine")
