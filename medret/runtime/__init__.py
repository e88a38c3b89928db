"""Deployable runtimes for a loaded encoder: torch as loaded, ONNX Runtime or OpenVINO (fp32 or with
int8/int4 kernels), or any backend registered in ``medret.runtime.backend``.

``validate(cfg)`` checks a RuntimeConfig cheaply (no model, no runtime import beyond a spec lookup);
``build_runtime(encoder, cfg, cache_dir, weights_key, calibration)`` returns an encoder with
TextEncoder's interface and a results.json block. onnxruntime/openvino/nncf are imported lazily.
"""

from medret.runtime.backend import Backend, BuildJob, register
from medret.runtime.build import build_runtime
from medret.runtime.encoder import RuntimeEncoder
from medret.runtime.export import export_onnx
from medret.runtime.options import needs_calibration, validate

__all__ = [
    "Backend",
    "BuildJob",
    "RuntimeEncoder",
    "build_runtime",
    "export_onnx",
    "needs_calibration",
    "register",
    "validate",
]
