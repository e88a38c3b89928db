"""Weight quantization of a retriever's encoders. ``none`` leaves the fp32 weights as loaded."""

from __future__ import annotations

from typing import Any

from medret.config import QuantConfig
from medret.errors import InputError
from medret.models import Retriever

SCHEMES = ("none",)


def quantize_retriever(retriever: Retriever, cfg: QuantConfig) -> dict[str, Any]:
    """Quantize in place; returns what was done, for results.json."""
    if cfg.name not in SCHEMES:
        raise InputError(f"quant.name={cfg.name!r}: expected one of {', '.join(SCHEMES)}")
    return {"scheme": cfg.name, "bits": cfg.bits, "weight_dtype": str(next(retriever.doc.model.parameters()).dtype)}
