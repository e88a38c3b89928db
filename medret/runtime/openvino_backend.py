"""OpenVINO: convert the exported ONNX graph, quantize it with NNCF (int8 PTQ or int4 weights), compile."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medret.config import RuntimeConfig

log = logging.getLogger(__name__)

XML_FILE = "model.xml"


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
        model = nncf.quantize(
            model,
            nncf.Dataset(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            preset=nncf.QuantizationPreset.MIXED,
        )
        done = {"nncf": "quantize", "preset": "mixed", "model_type": "transformer"}
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
