"""Weight quantization of a retriever's encoders.

Schemes: ``none``; casts ``fp16``/``bf16``; bitsandbytes ``bnb_int8``/``bnb_nf4``/``bnb_fp4``; custom
``uniform``, ``kmeans``, ``nf``, ``log``, ``companding``, ``fisher_kmeans`` and ``outliers``, each a
pure quantize/dequantize pair in its own module, stored packed in ``QuantLinear``.
"""

from __future__ import annotations

import random
from typing import Any

from medret.quant.apply import CASTS, SCHEMES, as_config, quantize_model, state_bytes, validate
from medret.quant.linear import QuantLinear

__all__ = ["SCHEMES", "needs_calibration", "quantize_retriever", "validate"]


def needs_calibration(cfg) -> bool:
    """Whether any module's scheme (top level or an override) is Fisher-weighted k-means."""
    specs = [cfg, *cfg.overrides.values()]
    return any("fisher_kmeans" in (spec.get("name"), spec.get("base")) for spec in specs)


def quantize_retriever(retriever, cfg, calibration: list[str] | None = None) -> dict[str, Any]:
    """Quantize in place (each distinct model once); returns what was done, for results.json."""
    cfg = as_config(cfg)
    validate(cfg)
    encoders = [retriever.doc] if retriever.query.model is retriever.doc.model else [retriever.doc, retriever.query]
    fp32_bytes = sum(state_bytes(e.model) for e in encoders)
    info: dict[str, Any] = {"scheme": cfg.name, "bits": cfg.bits}
    if cfg.name in CASTS:
        for e in encoders:
            e.model.to(CASTS[cfg.name])
        info["effective_bits_per_param"] = 16.0
    elif cfg.name != "none":
        if calibration and len(calibration) > cfg.calibration_texts:
            calibration = random.Random(0).sample(calibration, cfg.calibration_texts)
        reports = [
            quantize_model(e.model, e.tokenizer, cfg, calibration, e.settings.pooling, e.settings.max_length)
            for e in encoders
        ]
        params = sum(r["quantized_params"] for r in reports)
        info.update(
            {
                "layers": [dict(layer, encoder=i) for i, r in enumerate(reports) for layer in r["layers"]],
                "quantized_params": params,
                "effective_bits_per_param": sum(r["effective_bits_per_param"] * r["quantized_params"] for r in reports)
                / params
                if params
                else None,
                "bnb_4bit_compute_dtype_ran": reports[0]["bnb_4bit_compute_dtype_ran"],
            }
        )
        if cfg.name.startswith("bnb_4") or cfg.name in ("bnb_nf4", "bnb_fp4"):
            info["bnb_4bit_compute_dtype_requested"] = cfg.compute_dtype
    else:
        # a model saved packed (quant.save_dir, train=qat) loads as QuantLinear: report its real bits
        packed = [
            (m.state().effective_bits(), m.in_features * m.out_features)
            for e in encoders
            for m in e.model.modules()
            if isinstance(m, QuantLinear)
        ]
        if packed:
            n = sum(p for _, p in packed)
            info.update(
                {
                    "loaded_packed": True,
                    "quantized_params": n,
                    "effective_bits_per_param": sum(b * p for b, p in packed) / n,
                }
            )
        else:
            info["effective_bits_per_param"] = 32.0
    info["model_bytes"] = sum(state_bytes(e.model) for e in encoders)
    info["fp32_model_bytes"] = fp32_bytes
    return info
