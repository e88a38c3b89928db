"""OpenVINO: convert the exported ONNX graph, quantize it with NNCF (int8 PTQ or int4 weights), compile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medret.config import RuntimeConfig
from medret.errors import InputError
from medret.runtime.backend import register
from medret.runtime.cache import model_files
from medret.runtime.exported import ExportedBackend
from medret.runtime.onnx_backend import down_projections

log = logging.getLogger(__name__)

XML_FILE = "model.xml"
INT4_MODES = ("int4_sym", "int4_asym", "nf4")


def convert(
    src: Path, dst: Path, cfg: RuntimeConfig, calibration: list[dict[str, np.ndarray]] | None
) -> dict[str, Any]:
    """ONNX -> OpenVINO IR at ``dst`` (model.xml + model.bin), quantized as ``cfg.quantize`` says."""
    import openvino as ov

    model = ov.convert_model(str(src))
    done: dict[str, Any] = {}
    if cfg.quantize == "int8":
        import nncf

        if not calibration:
            raise ValueError("openvino int8 needs calibration batches")
        # int8 weights and activations (FakeQuantize pairs the CPU plugin runs as int8 kernels);
        # TRANSFORMER keeps softmax/layernorm paths in float, as NNCF recommends for BERTs
        advanced = None
        if cfg.smooth_quant is not None:
            from nncf.quantization.advanced_parameters import (
                AdvancedQuantizationParameters,
                AdvancedSmoothQuantParameters,
            )

            alphas = AdvancedSmoothQuantParameters(matmul=cfg.smooth_quant)
            advanced = AdvancedQuantizationParameters(smooth_quant_alphas=alphas)
        kept = down_projections(src) if cfg.float_down_proj else []
        model = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            preset=nncf.QuantizationPreset.MIXED,
            ignored_scope=nncf.IgnoredScope(names=kept) if kept else None,
            advanced_parameters=advanced,
        )
        done = {"nncf": "quantize", "preset": "mixed", "model_type": "transformer"}
        done["smooth_quant"] = "nncf default" if cfg.smooth_quant is None else cfg.smooth_quant
        done["fp32_matmuls_kept"] = len(kept)
        done["calibration_batches"] = len(calibration)
    elif cfg.quantize == "int4_weights":
        import nncf

        mode = getattr(nncf.CompressWeightsMode, cfg.int4_mode.upper())
        # weights only: matmuls decompress int4 groups on the fly; embeddings/last layer stay int8 (NNCF default)
        model = nncf.compress_weights(model, mode=mode, group_size=cfg.group_size, ratio=cfg.ratio)
        done = {"nncf": "compress_weights", "mode": cfg.int4_mode, "group_size": cfg.group_size, "ratio": cfg.ratio}
    # compress_to_fp16=False: fp32 stays fp32 on disk, so sizes compare with the ONNX files honestly
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return done


def compile_model(path: Path, threads: int | None, precision: str = "f32") -> tuple[Any, dict[str, Any]]:
    """Compiled CPU model; the inference precision is set explicitly (this CPU would default to bf16)."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    ran = compiled.get_property("INFERENCE_PRECISION_HINT")
    return compiled, {
        "provider": "openvino CPU",
        "device": "cpu",
        "device_name": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "inference_precision": ran.get_type_name() if hasattr(ran, "get_type_name") else str(ran),
        "input_names": [p.get_any_name() for p in compiled.inputs],
    }


def runner(compiled: Any) -> Any:
    request = compiled.create_infer_request()
    names = {p.get_any_name() for p in compiled.inputs}
    output = compiled.outputs[0]

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        res = request.infer({k: v for k, v in feeds.items() if k in names})
        return np.array(res[output], dtype=np.float32)  # copy: the request's buffer is reused

    return run


class OpenVinoBackend(ExportedBackend):
    name = "openvino"
    modes = ("none", "int8", "int4_weights")
    precisions = ("f32", "bf16")
    calibrated = ("int8",)
    libraries = ("onnx", "onnxscript", "openvino", "nncf")
    suffixes = (".xml", ".bin")

    def modules(self, cfg: RuntimeConfig) -> list[str]:
        return [*super().modules(cfg), "openvino", *(["nncf"] if cfg.quantize != "none" else [])]

    def check(self, cfg: RuntimeConfig) -> None:
        if cfg.provider == "cuda":
            raise InputError("runtime.provider=cuda: runtime=openvino runs on the CPU here (use auto or cpu)")
        if cfg.quantize == "int4_weights":
            if cfg.int4_mode not in INT4_MODES:
                raise InputError(f"runtime.int4_mode={cfg.int4_mode!r}: expected one of {', '.join(INT4_MODES)}")
            if cfg.group_size != -1 and cfg.group_size < 2:
                raise InputError(f"runtime.group_size={cfg.group_size}: expected -1 (per channel) or at least 2")
            if not 0.0 < cfg.ratio <= 1.0:
                raise InputError(f"runtime.ratio={cfg.ratio}: expected 0 < ratio <= 1")
        sq = cfg.smooth_quant
        if sq is not None and sq != -1 and not 0.0 <= sq <= 1.0:
            raise InputError(f"runtime.smooth_quant={sq}: expected an alpha in 0..1, or -1 (off)")
        super().check(cfg)

    def variant_parts(self, cfg: RuntimeConfig, versions: dict[str, str | None]) -> dict[str, Any] | None:
        parts: dict[str, Any] = {"openvino": versions["openvino"], "nncf": None}
        if cfg.quantize != "none":
            parts["nncf"] = versions["nncf"]
        if cfg.quantize == "int8" and cfg.smooth_quant is not None:
            parts["smooth_quant"] = cfg.smooth_quant  # absent at the default: earlier exports keep their keys
        if cfg.float_down_proj:
            parts["float_down_proj"] = True
        if cfg.quantize == "int4_weights":
            parts.update(int4_mode=cfg.int4_mode, group_size=cfg.group_size, ratio=cfg.ratio)
        return parts

    def convert(
        self, src: Path, folder: Path, cfg: RuntimeConfig, batches: list | None, export_meta: dict[str, Any]
    ) -> dict[str, Any]:
        return convert(src, folder / XML_FILE, cfg, batches)

    def load(self, folder: Path, cfg: RuntimeConfig) -> tuple[Any, dict[str, Any], list[Path]]:
        compiled, ran = compile_model(folder / XML_FILE, cfg.threads, cfg.precision)
        return runner(compiled), ran, model_files(folder, self.suffixes)


register(OpenVinoBackend())
