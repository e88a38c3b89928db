"""ExportedBackend: the shared build of runtimes that run torch's ONNX export (ONNX Runtime, OpenVINO).

Export the fp32 graph once per weights (cached), convert/quantize it into the backend's own files
(cached by the variant key), load those. A backend supplies ``variant_parts``, ``convert`` and ``load``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medret.config import RuntimeConfig
from medret.errors import InputError
from medret.runtime.backend import BuildJob
from medret.runtime.cache import build_atomic, export_key, variant_key
from medret.runtime.encoder import RuntimeEncoder, length_order, padded_batches, tokenize
from medret.runtime.export import ONNX_FILE, export_onnx
from medret.runtime.info import built_info, runtime_versions
from medret.runtime.options import MAX_OPSET, MIN_OPSET
from medret.storage import digest

CALIBRATION_BATCH = 8


def calibration_batches(
    encoder: Any, texts: list[str], names: tuple[str, ...], batch_size: int = CALIBRATION_BATCH
) -> list[dict[str, np.ndarray]]:
    """The calibration texts tokenized exactly as encode() will see documents (prefix, truncation)."""
    enc = tokenize(encoder.tokenizer, texts, encoder.settings.prefix, encoder.settings.max_length)
    order = length_order(enc)
    return [feeds for _, feeds in padded_batches(encoder.tokenizer, enc, order, batch_size, names)]


def calibration_digest(encoder: Any, texts: list[str]) -> str:
    s = encoder.settings
    return digest(
        {
            "texts": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
            "prefix": s.prefix,
            "max_length": s.max_length,
            "batch": CALIBRATION_BATCH,
        },
        16,
    )


class ExportedBackend:
    """Base of the backends that deploy the ONNX export; subclasses set the Backend attributes."""

    name: str
    modes: tuple[str, ...]
    precisions: tuple[str, ...] = ("f32",)
    calibrated: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()
    hint = ""
    suffixes: tuple[str, ...] = ()  # the model files it ships (besides external .data)

    def modules(self, cfg: RuntimeConfig) -> list[str]:
        return ["onnx", "onnxscript"]

    def check(self, cfg: RuntimeConfig) -> None:
        # torch's dynamo exporter writes opset 18 or later; a lower one would be silently raised
        if not MIN_OPSET <= cfg.opset <= MAX_OPSET:
            raise InputError(
                f"runtime.opset={cfg.opset}: expected an ONNX opset in {MIN_OPSET}..{MAX_OPSET} "
                "(torch's exporter writes 18 or later)"
            )

    def variant_parts(self, cfg: RuntimeConfig, versions: dict[str, str | None]) -> dict[str, Any] | None:
        """What the converted files depend on beyond the export (library versions, options); None: the
        export itself is the deployed model."""
        raise NotImplementedError

    def convert(
        self, src: Path, folder: Path, cfg: RuntimeConfig, batches: list | None, export_meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the deployed files of ``src`` into ``folder``; returns the settings used."""
        raise NotImplementedError

    def load(self, folder: Path, cfg: RuntimeConfig) -> tuple[Any, dict[str, Any], list[Path]]:
        """(run function, what it runs on, the model files) for a finished build folder."""
        raise NotImplementedError

    def build(self, encoder: Any, cfg: RuntimeConfig, job: BuildJob) -> tuple[Any, dict[str, Any]]:
        calib_texts = job.calibration
        calib_digest = calibration_digest(encoder, calib_texts) if calib_texts else None
        root = Path(job.cache_dir) / "runtime"
        base_key = export_key(job.weights_key, encoder.settings, cfg.opset)
        key = variant_key(base_key, cfg.name, cfg.quantize, calib_digest, self.variant_parts(cfg, runtime_versions()))
        t0 = time.perf_counter()

        def make_export(tmp: Path) -> dict[str, Any]:
            t = time.perf_counter()
            info = export_onnx(encoder, tmp, cfg.opset)
            return {**info, "export_s": round(time.perf_counter() - t, 3), "versions": runtime_versions()}

        export_meta, export_cached = build_atomic(root / base_key, make_export)
        names = tuple(export_meta["inputs"])

        def make_variant(tmp: Path) -> dict[str, Any]:
            batches = calibration_batches(encoder, calib_texts, names) if calib_texts else None
            done = self.convert(root / base_key / ONNX_FILE, tmp, cfg, batches, export_meta)
            n_texts = len(calib_texts or [])
            return {**export_meta, "conversion": done, "versions": runtime_versions(), "calibration_texts": n_texts}

        if key == base_key:
            meta, cached = export_meta, export_cached
        else:
            meta, cached = build_atomic(root / key, make_variant)
        build_s = time.perf_counter() - t0
        folder = root / key

        t1 = time.perf_counter()
        run, ran, files = self.load(folder, cfg)
        load_s = time.perf_counter() - t1
        device = torch.device(ran["device"])
        rt = RuntimeEncoder(run, names, encoder.tokenizer, encoder.settings, encoder.dim, device, files, str(folder))
        timings = {"build_s": build_s, "load_s": load_s}
        info = built_info(cfg, meta, ran, files, names, cached=cached, export_cached=export_cached, key=key, **timings)
        return rt, info
