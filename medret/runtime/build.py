"""build_runtime: export (or reuse) the encoder's graph, quantize it for the runtime, load it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medret.config import RuntimeConfig
from medret.errors import InputError
from medret.runtime.encoder import RuntimeEncoder, length_order, padded_batches, tokenize
from medret.runtime.export import ONNX_FILE, export_onnx, quantized_modules, source_dtype
from medret.runtime.options import MIN_OPSET, as_config, needs_calibration, validate

log = logging.getLogger(__name__)

META = "meta.json"  # written last: a folder without it is not a finished build
CALIBRATION_BATCH = 8
EXPORT_FORMAT = 2  # bump when export_onnx writes a different graph for the same weights
_LIBS = ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def export_key(weights_key: str, settings: Any, opset: int) -> str:
    """What the fp32 graph depends on: the weights, pooling, normalisation, opset and the exporter."""
    parts = {
        "weights": weights_key,
        "pooling": settings.pooling,
        "normalize": bool(settings.normalize),
        "opset": max(opset, MIN_OPSET),
        "torch": versions()["torch"],
        "format": EXPORT_FORMAT,
    }
    return f"onnx-{_digest(parts)}"


def variant_key(base: str, cfg: RuntimeConfig, calib_digest: str | None) -> str:
    """The deployed files: the export plus the runtime's conversion/quantization settings (threads and
    provider are load-time choices, not part of the files)."""
    if cfg.name == "onnx" and cfg.quantize == "none":
        return base  # the export itself is the deployed model
    v = versions()
    parts: dict[str, Any] = {"base": base, "name": cfg.name, "quantize": cfg.quantize, "calibration": calib_digest}
    if cfg.name == "onnx":
        parts["onnxruntime"] = v["onnxruntime"]
    else:
        parts.update(openvino=v["openvino"], nncf=v["nncf"] if cfg.quantize != "none" else None)
    if cfg.name == "openvino" and cfg.quantize == "int4_weights":
        parts.update(int4_mode=cfg.int4_mode, group_size=cfg.group_size, ratio=cfg.ratio)
    return f"{cfg.name}-{cfg.quantize}-{_digest(parts)}"


def calibration_sample(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """A seeded sample of at most ``n`` texts (the same sample for the same list)."""
    return random.Random(seed).sample(texts, n) if len(texts) > n else list(texts)


def calibration_batches(
    encoder: Any, texts: list[str], names: tuple[str, ...], batch_size: int = CALIBRATION_BATCH
) -> list[dict[str, np.ndarray]]:
    """The calibration texts tokenized exactly as encode() will see documents (prefix, truncation)."""
    enc = tokenize(encoder.tokenizer, texts, encoder.settings.prefix, encoder.settings.max_length)
    order = length_order(enc)
    return [feeds for _, feeds in padded_batches(encoder.tokenizer, enc, order, batch_size, names)]


def _calibration_digest(encoder: Any, texts: list[str]) -> str:
    s = encoder.settings
    return _digest(
        {
            "texts": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
            "prefix": s.prefix,
            "max_length": s.max_length,
            "batch": CALIBRATION_BATCH,
        }
    )


def _model_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files a deployment ships (graph, weights, external data), not our meta.json."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in suffixes or p.name.endswith(".data")))


DEBRIS = re.compile(r"^\.(?P<key>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
STALE_S = 24 * 3600  # a temp folder of another host is debris after a day (no build takes that long)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_debris(root: Path) -> list[Path]:
    """Remove temp build folders a killed process left in ``root``: this host's whose process is gone,
    any host's older than a day (a shared cache may sit on a cluster file system). Returns what went."""
    gone = []
    host = socket.gethostname()
    for p in root.glob(".*.tmp-*") if root.is_dir() else ():
        m = DEBRIS.match(p.name)
        if not m or not p.is_dir():
            continue
        dead = not _alive(int(m["pid"])) if m["host"] == host else time.time() - p.stat().st_mtime > STALE_S
        if dead:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    if gone:
        log.info("removed %d temp folder(s) left by killed runtime builds in %s", len(gone), root)
    return gone


def _build_atomic(folder: Path, make: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Run ``make(tmp)`` into a fresh temp folder, write META, then rename it into place: a killed build is
    never read as done. Returns (meta, cached)."""
    meta_path = folder / META
    if meta_path.is_file():
        return json.loads(meta_path.read_text()), True
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_debris(folder.parent)
    tmp = folder.with_name(f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        meta = make(tmp)
        meta["build_s"] = round(time.perf_counter() - t0, 3)
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if folder.exists() and not meta_path.is_file():
            shutil.rmtree(folder)  # a folder without META is debris from an older crash
        try:
            os.replace(tmp, folder)
        except OSError:
            if not meta_path.is_file():
                raise
            # another process finished the same build first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
            return json.loads(meta_path.read_text()), True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta, False


def _torch_info(encoder: Any) -> dict[str, Any]:
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
        "versions": {"torch": versions()["torch"]},
        "provider": "torch",
        "device": str(encoder.device),
        "threads": torch.get_num_threads(),
        "inference_precision": str(autocast or dtype).removeprefix("torch."),
        "bytes_on_disk": None,
        "cached": False,
        "export_s": 0.0,
    }


def _load(folder: Path, cfg: RuntimeConfig) -> tuple[Any, dict[str, Any], list[Path]]:
    """(run function, what it runs on, the model files) for a finished build folder."""
    if cfg.name == "onnx":
        from medret.runtime import onnx_backend

        sess, ran = onnx_backend.session(folder / ONNX_FILE, cfg.threads, onnx_backend.pick_provider(cfg.provider))
        # the float ops' precision; int8 modes run their MatMuls with integer kernels besides
        ran["inference_precision"] = "f32"
        return onnx_backend.runner(sess), ran, _model_files(folder, (".onnx",))
    from medret.runtime import openvino_backend

    compiled, ran = openvino_backend.compile_model(folder / openvino_backend.XML_FILE, cfg.threads, cfg.precision)
    return openvino_backend.runner(compiled), ran, _model_files(folder, (".xml", ".bin"))


def _info(
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
    """The results.json block of a built runtime: what ran, how big, whether it was cached."""
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
        "versions": versions(),
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


def build_runtime(
    encoder: Any,
    cfg: Any,
    cache_dir: Path,
    weights_key: str,
    calibration: list[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The encoder running in ``cfg.name`` (``torch``: the encoder itself), and what ran, for results.json.

    ``weights_key`` must identify the encoder's weights as loaded *and* quantized in torch (model path,
    revision, quant config, adapter): the export cache is keyed by it. ``calibration``: corpus texts (never
    queries) for static int8 / OpenVINO int8; a seeded sample of ``cfg.calibration_texts`` is used.
    """
    cfg = as_config(cfg)
    validate(cfg)
    if cfg.name == "torch":
        return encoder, _torch_info(encoder)
    calib_texts: list[str] | None = None
    calib_digest = None
    if needs_calibration(cfg):
        if not calibration:
            raise InputError(
                f"runtime={cfg.name} quantize={cfg.quantize}: needs calibration texts (corpus documents); none given"
            )
        calib_texts = calibration_sample(calibration, cfg.calibration_texts)
        calib_digest = _calibration_digest(encoder, calib_texts)
    root = Path(cache_dir) / "runtime"
    base_key = export_key(weights_key, encoder.settings, cfg.opset)
    key = variant_key(base_key, cfg, calib_digest)
    t0 = time.perf_counter()

    def make_export(tmp: Path) -> dict[str, Any]:
        t = time.perf_counter()
        info = export_onnx(encoder, tmp, cfg.opset)
        return {**info, "export_s": round(time.perf_counter() - t, 3), "versions": versions()}

    export_meta, export_cached = _build_atomic(root / base_key, make_export)
    src = root / base_key / ONNX_FILE
    names = tuple(export_meta["inputs"])

    def make_variant(tmp: Path) -> dict[str, Any]:
        batches = calibration_batches(encoder, calib_texts, names) if calib_texts else None
        if cfg.name == "onnx":
            from medret.runtime import onnx_backend

            done = onnx_backend.quantize(src, tmp / ONNX_FILE, cfg.quantize, batches, export_meta["external_data"], tmp)
            for p in tmp.glob("preprocessed.onnx*"):
                p.unlink()
        else:
            from medret.runtime import openvino_backend

            done = openvino_backend.convert(src, tmp / openvino_backend.XML_FILE, cfg, batches)
        return {**export_meta, "conversion": done, "versions": versions(), "calibration_texts": len(calib_texts or [])}

    if key == base_key:
        meta, cached = export_meta, export_cached
    else:
        meta, cached = _build_atomic(root / key, make_variant)
    build_s = time.perf_counter() - t0
    folder = root / key

    t1 = time.perf_counter()
    run, ran, files = _load(folder, cfg)
    load_s = time.perf_counter() - t1
    device = torch.device(ran["device"])
    rt = RuntimeEncoder(run, names, encoder.tokenizer, encoder.settings, encoder.dim, device, files, str(folder))
    info = _info(
        cfg,
        meta,
        ran,
        files,
        names,
        cached=cached,
        export_cached=export_cached,
        build_s=build_s,
        load_s=load_s,
        key=key,
    )
    return rt, info
