"""ONNX Runtime: int8 quantization of the exported graph (dynamic or calibrated static) and the session."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medret.config import RuntimeConfig
from medret.errors import InputError
from medret.runtime.backend import register
from medret.runtime.cache import model_files
from medret.runtime.export import ONNX_FILE, OUTPUT
from medret.runtime.exported import ExportedBackend

log = logging.getLogger(__name__)


class _DropHints(logging.Filter):
    """ORT's quantizer advises pre-processing on the root logger on every call, even after it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    flt = _DropHints()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _preprocess(src: Path, dst: Path, external: bool) -> Path:
    """ORT's recommended pre-pass (ONNX shape inference + basic graph optimisation) before quantizing;
    the raw graph when it fails (the pass is an aid, not a requirement)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        # symbolic shape inference gives up on dynamo-exported attention ("incomplete"): ONNX's own suffices
        quant_pre_process(
            str(src),
            str(dst),
            skip_symbolic_shape=True,
            save_as_external_data=external,
            all_tensors_to_one_file=True,
        )
        return dst
    except Exception as err:  # noqa: BLE001 - any failure here only costs the pre-pass
        log.warning("onnx quant_pre_process failed (%s); quantizing the exported graph as is", type(err).__name__)
        return src


def _reader(batches: list[dict[str, np.ndarray]]) -> Any:
    """A CalibrationDataReader over pre-tokenized batches (int64 feeds)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


@_quiet_root()  # a generator context manager decorates too: entered afresh on each call
def quantize(
    src: Path,
    dst: Path,
    mode: str,
    calibration: list[dict[str, np.ndarray]] | None,
    external: bool,
    work: Path,
    float_down_proj: bool = False,
) -> dict[str, Any]:
    """Write the int8 graph of ``src`` to ``dst``; returns the settings used (for results.json)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    pre = _preprocess(src, work / "preprocessed.onnx", external)
    if mode == "dynamic_int8":
        # int8 weights per output channel, activations quantized per batch at run time (MatMulInteger):
        # no calibration; embeddings (Gather) are stored int8 too
        op_types = ["MatMul", "Gemm", "Gather"]
        kept = down_projections(pre) if float_down_proj else []
        quantize_dynamic(
            str(pre),
            str(dst),
            op_types_to_quantize=op_types,
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=kept,
            use_external_data_format=external,
        )
        return {
            "format": "QOperator(dynamic)",
            "weights": "int8 per-channel",
            "activations": "uint8 dynamic",
            "op_types": op_types,
            "fp32_matmuls_kept": len(kept),
        }
    if mode == "static_int8":
        if not calibration:
            raise ValueError("static_int8 needs calibration batches")
        nodes, skipped = static_nodes(pre)
        quantize_static(
            str(pre),
            str(dst),
            _reader(calibration),
            quant_format=QuantFormat.QDQ,  # ORT fuses QDQ pairs into int8 MatMul kernels
            op_types_to_quantize=["MatMul", "Gather"],
            nodes_to_quantize=nodes or None,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            use_external_data_format=external,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return {
            "format": "QDQ(static)",
            "weights": "int8 per-channel",
            "activations": "uint8 per-tensor, calibrated (MinMax)",
            "quantized_nodes": len(nodes),
            "fp32_matmuls_kept": skipped,
            "calibration_batches": len(calibration),
        }
    raise ValueError(f"unknown onnx quantize mode {mode!r}")


def _weight_matmuls(path: Path) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """(MatMul node, its 2-D weight's [in, out] shape) for every MatMul against a weight, and the embedding
    Gathers."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    matmuls, gathers = [], []
    for n in graph.node:
        weight = next((shapes[i] for i in n.input if i in shapes), None)
        if n.op_type == "Gather" and n.input[0] in shapes:
            gathers.append(n.name)
        elif n.op_type == "MatMul" and weight is not None and len(weight) == 2:
            matmuls.append((n.name, weight))
    return matmuls, gathers


def down_projections(path: Path) -> list[str]:
    """The FFN down-projections: MatMuls whose [in, out] weight has in > out (their input is the GELU output,
    which carries BERT's activation outliers). OpenVINO keeps ONNX node names, so these name its nodes too."""
    return _down(_weight_matmuls(path)[0])


def _down(matmuls: list[tuple[str, list[int]]]) -> list[str]:
    return [name for name, (d_in, d_out) in matmuls if d_in > d_out]


def static_nodes(path: Path) -> tuple[list[str], int]:
    """Nodes static int8 quantizes: MatMuls against a weight, except down-projections, plus embedding Gathers.

    Static ranges are per tensor: the attention score/value MatMuls (activation x activation) and the
    FFN down-projection, whose GELU input carries BERT's activation outliers, lose most of the accuracy
    (MiniLM: min cosine 0.92 with them, 0.99 without). Returns (node names, down-projections kept fp32).
    """
    matmuls, gathers = _weight_matmuls(path)
    down = set(_down(matmuls))
    return gathers + [n for n, _ in matmuls if n not in down], len(down)


def pick_provider(requested: str) -> str:
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    if requested == "cuda" or (requested == "auto" and cuda):
        return "CUDAExecutionProvider"
    return "CPUExecutionProvider"


def session(path: Path, threads: int | None, provider: str) -> tuple[Any, dict[str, Any]]:
    """An InferenceSession and what it really runs on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    used = sess.get_providers()
    return sess, {
        "provider": used[0],
        "device": "cuda" if used[0] == "CUDAExecutionProvider" else "cpu",
        "threads": threads,
        "input_names": [i.name for i in sess.get_inputs()],
    }


def runner(sess: Any) -> Any:
    names = {i.name for i in sess.get_inputs()}

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = sess.run([OUTPUT], {k: v for k, v in feeds.items() if k in names})[0]
        return np.asarray(out, dtype=np.float32)

    return run


class OnnxBackend(ExportedBackend):
    name = "onnx"
    modes = ("none", "dynamic_int8", "static_int8")
    calibrated = ("static_int8",)
    libraries = ("onnx", "onnxscript", "onnxruntime")
    suffixes = (".onnx",)

    def modules(self, cfg: RuntimeConfig) -> list[str]:
        return [*super().modules(cfg), "onnxruntime"]

    def check(self, cfg: RuntimeConfig) -> None:
        super().check(cfg)
        # without onnxruntime the missing-package check names it; this one needs it imported
        if cfg.provider == "cuda" and importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise InputError(
                    "runtime.provider=cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu "
                    "(in place of onnxruntime)"
                )
            if not torch.cuda.is_available():
                raise InputError("runtime.provider=cuda: CUDA is not available on this machine")

    def variant_parts(self, cfg: RuntimeConfig, versions: dict[str, str | None]) -> dict[str, Any] | None:
        if cfg.quantize == "none":
            return None  # the export itself is the deployed model
        parts = {"onnxruntime": versions["onnxruntime"]}
        if cfg.float_down_proj:
            parts["float_down_proj"] = True  # absent when off: earlier exports keep their keys
        return parts

    def convert(
        self, src: Path, folder: Path, cfg: RuntimeConfig, batches: list | None, export_meta: dict[str, Any]
    ) -> dict[str, Any]:
        external = export_meta["external_data"]
        done = quantize(src, folder / ONNX_FILE, cfg.quantize, batches, external, folder, cfg.float_down_proj)
        for p in folder.glob("preprocessed.onnx*"):
            p.unlink()
        return done

    def load(self, folder: Path, cfg: RuntimeConfig) -> tuple[Any, dict[str, Any], list[Path]]:
        sess, ran = session(folder / ONNX_FILE, cfg.threads, pick_provider(cfg.provider))
        # the float ops' precision; int8 modes run their MatMuls with integer kernels besides
        ran["inference_precision"] = "f32"
        return runner(sess), ran, model_files(folder, self.suffixes)


register(OnnxBackend())
