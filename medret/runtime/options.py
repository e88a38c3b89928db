"""Runtime options: the cheap checks run before any model loads. Which modes, precisions and packages a
runtime has is declared by its backend (``medret.runtime.backend``)."""

from __future__ import annotations

import importlib.util
from typing import Any

from medret.config import RuntimeConfig
from medret.errors import InputError

PROVIDERS = ("auto", "cpu", "cuda")
# the opsets torch's ONNX exporter (dynamo, the one that traces transformers 5 correctly) writes:
# 18 or later, up to torch.onnx's ONNX_MAX_OPSET (23 in torch 2.6-2.13)
MIN_OPSET = 18
MAX_OPSET = 23


def as_config(cfg: Any) -> RuntimeConfig:
    """A RuntimeConfig from itself, an OmegaConf node or a plain mapping."""
    if isinstance(cfg, RuntimeConfig):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RuntimeConfig), cfg))


def needs_calibration(cfg: Any) -> bool:
    from medret.runtime.backend import backend

    cfg = as_config(cfg)
    return cfg.quantize in backend(cfg.name).calibrated


def required_modules(cfg: RuntimeConfig) -> list[str]:
    """Python modules a runtime/mode imports."""
    from medret.runtime.backend import backend

    return backend(cfg.name).modules(cfg)


def missing_modules(cfg: RuntimeConfig) -> list[str]:
    return [m for m in required_modules(cfg) if importlib.util.find_spec(m) is None]


def validate(cfg: Any) -> None:
    """Raise InputError (one line) for a bad runtime config or a missing library; loads no model."""
    from medret.runtime.backend import backend

    cfg = as_config(cfg)
    b = backend(cfg.name)  # an unknown name is an error here, never another runtime's path
    if cfg.quantize not in b.modes:
        raise InputError(f"runtime.quantize={cfg.quantize!r}: runtime={cfg.name} takes {' | '.join(b.modes)}{b.hint}")
    if cfg.precision not in b.precisions:
        raise InputError(f"runtime.precision={cfg.precision!r}: runtime={cfg.name} takes {' | '.join(b.precisions)}")
    if cfg.provider not in PROVIDERS:
        raise InputError(f"runtime.provider={cfg.provider!r}: expected one of {', '.join(PROVIDERS)}")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise InputError(f"runtime.threads={cfg.threads!r}: expected a positive integer or null (all cores)")
    if cfg.quantize in b.calibrated and cfg.calibration_texts < 1:
        raise InputError(
            f"runtime.calibration_texts={cfg.calibration_texts}: runtime={cfg.name} quantize={cfg.quantize} "
            "needs at least 1"
        )
    if cfg.smooth_quant is not None and (cfg.name, cfg.quantize) != ("openvino", "int8"):
        raise InputError(
            f"runtime.smooth_quant={cfg.smooth_quant}: only runtime=openvino runtime.quantize=int8 uses it "
            f"(this is runtime={cfg.name} quantize={cfg.quantize})"
        )
    if cfg.float_down_proj and (cfg.name, cfg.quantize) not in (("onnx", "dynamic_int8"), ("openvino", "int8")):
        always = " (static_int8 always keeps them)" if cfg.quantize == "static_int8" else ""
        raise InputError(
            f"runtime.float_down_proj=true: only runtime=onnx quantize=dynamic_int8 and runtime=openvino "
            f"quantize=int8 use it{always} (this is runtime={cfg.name} quantize={cfg.quantize})"
        )
    b.check(cfg)
    missing = missing_modules(cfg)
    if missing:
        pkgs = " ".join(missing)  # each module's pip distribution has the same name
        raise InputError(
            f"runtime={cfg.name}: the {', '.join(missing)} package(s) are not installed; pip install {pkgs}"
        )
