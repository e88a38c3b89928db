"""The results.json block of a runtime: what ran, on what, from which files, and with which libraries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medret.config import RuntimeConfig
from medret.runtime import backend as registry
from medret.runtime.export import quantized_modules, source_dtype
from medret.tracking.provenance import versions

log = logging.getLogger(__name__)

EXPORTER = ("torch", "onnx", "onnxscript")  # every exported runtime goes through these


def runtime_versions() -> dict[str, str | None]:
    """The exporter's and every registered backend's packages (None: not installed)."""
    libs = dict.fromkeys(EXPORTER)
    for name in registry.names():
        libs.update(dict.fromkeys(registry.backend(name).libraries))
    return versions(tuple(libs))


def torch_info(encoder: Any) -> dict[str, Any]:
    """The torch stage as loaded: the runtime adds nothing (quant's own block says how it was quantized)."""
    model = encoder.model
    dtype = source_dtype(model)
    autocast = getattr(encoder, "autocast", None)
    return {
        "name": "torch",
        "quantize": "none",
        "quantization": "none",
        "from_medret_quant": bool(quantized_modules(model)) or dtype != torch.float32,
        "source_dtype": str(dtype).removeprefix("torch."),
        "versions": {"torch": runtime_versions()["torch"]},
        "provider": "torch",
        "device": str(encoder.device),
        "threads": torch.get_num_threads(),
        "inference_precision": str(autocast or dtype).removeprefix("torch."),
        "bytes_on_disk": None,
        "cached": False,
        "export_s": 0.0,
    }


def built_info(
    cfg: RuntimeConfig,
    meta: dict[str, Any],
    ran: dict[str, Any],
    files: list[Path],
    names: tuple[str, ...],
    *,
    cached: bool,
    export_cached: bool,
    build_s: float,
    load_s: float,
    key: str,
) -> dict[str, Any]:
    """The block of an exported runtime: what ran, how big, whether it was cached."""
    from_quant = bool(meta.get("from_medret_quant"))
    if cfg.quantize != "none":
        quantization = "deployed"  # integer weights on disk, integer (or int4-decompressing) kernels
    else:
        quantization = "simulated" if from_quant else "none"
    info = {
        "name": cfg.name,
        "quantize": cfg.quantize,
        "quantization": quantization,
        "from_medret_quant": from_quant,
        "source_dtype": meta.get("source_dtype"),
        "versions": runtime_versions(),
        "provider": ran["provider"],
        "device": ran["device"],
        "threads": ran["threads"],
        "inference_precision": ran["inference_precision"],
        "bytes_on_disk": sum(f.stat().st_size for f in files),
        "opset": meta.get("opset"),
        "attention": meta.get("attention"),
        "inputs": list(names),
        "conversion": meta.get("conversion"),
        "calibration_texts": meta.get("calibration_texts", 0),
        "cached": cached,
        "export_cached": export_cached,
        # seconds this call spent exporting/quantizing (0 when the whole build was cached)
        "export_s": 0.0 if cached else round(build_s, 3),
        "load_s": round(load_s, 3),
        "cache_key": key,
    }
    if "device_name" in ran:
        info["device_name"] = ran["device_name"]
    if from_quant and cfg.quantize != "none":
        log.warning(
            "runtime %s/%s quantizes weights that medret already quantized (%s): the errors compound",
            cfg.name,
            cfg.quantize,
            meta.get("source_dtype"),
        )
    return info
