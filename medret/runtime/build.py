"""build_runtime: the encoder running where ``runtime.name`` says, through that runtime's backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medret.errors import InputError
from medret.quant.corpus import seeded_sample as calibration_sample
from medret.runtime.backend import BuildJob, backend
from medret.runtime.options import as_config, needs_calibration, validate


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
    calib_texts: list[str] | None = None
    if needs_calibration(cfg):
        if not calibration:
            raise InputError(
                f"runtime={cfg.name} quantize={cfg.quantize}: needs calibration texts (corpus documents); none given"
            )
        calib_texts = calibration_sample(calibration, cfg.calibration_texts)
    return backend(cfg.name).build(encoder, cfg, BuildJob(Path(cache_dir), weights_key, calib_texts))
