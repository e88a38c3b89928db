"""Weight quantization of a retriever's encoders.

Schemes live in one registry (``medret.quant.registry``): ``none``; casts ``fp16``/``bf16``;
bitsandbytes ``bnb_int8``/``bnb_nf4``/``bnb_fp4``; custom ``uniform``, ``kmeans``, ``nf``, ``log``,
``companding``, ``fisher_kmeans`` and ``outliers``, each a pure quantize/dequantize pair in its own
module, stored packed in ``QuantLinear``; ``auto`` (per-layer widths from a sensitivity scan). Rounding
methods (``rtn``, ``gptq``, ``hqq``) have a registry of their own. The options are resolved once into a
``QuantPlan`` (``plan_quant``). This package knows nothing of ``medret.models``: it works on any object
with ``encoders()`` whose items hold ``model``, ``tokenizer`` and ``settings``.
"""

from __future__ import annotations

import time
from typing import Any

from medret.quant.apply import layer_specs, quantize_model
from medret.quant.checks import validate
from medret.quant.corpus import calibration_corpus, seeded_sample
from medret.quant.embedding import TieredEmbedding
from medret.quant.layers import decode_once, state_bytes
from medret.quant.linear import PackedModule
from medret.quant.memory import check_memory
from medret.quant.options import as_config, needs_calibration, quant_identity
from medret.quant.plan import QuantPlan, plan_quant
from medret.quant.registry import method, names, scheme
from medret.quant.sizes import PARTS, bytes_by_part, param_count

__all__ = [
    "QuantPlan",
    "calibration_corpus",
    "check_quant_memory",
    "decode_resident",
    "model_sizes",
    "method",
    "names",
    "needs_calibration",
    "plan_quant",
    "quant_identity",
    "quantize_retriever",
    "scheme",
    "state_bytes",
    "validate",
]


def _packed_info(encoders: list) -> dict[str, Any]:
    """A model saved packed (quant.save_dir, train=qat) loads as QuantLinear: report its real bits."""
    packed = [
        (m.state().effective_bits(), m.state().numel)
        for e in encoders
        for m in e.model.modules()
        if isinstance(m, PackedModule)
    ]
    packed += [
        (m.effective_bits(), m.num_embeddings * m.embedding_dim)
        for e in encoders
        for m in e.model.modules()
        if isinstance(m, TieredEmbedding)
    ]
    if not packed:
        return {"effective_bits_per_param": 32.0}
    n = sum(p for _, p in packed)
    return {"loaded_packed": True, "quantized_params": n, "effective_bits_per_param": sum(b * p for b, p in packed) / n}


def quantize_retriever(retriever, plan, calibration: list[str] | None = None) -> dict[str, Any]:
    """Quantize in place (each distinct model once) as ``plan`` says (a QuantPlan, or a config checked
    into one here); returns what was done, for results.json. ``calibration``: the run's corpus texts
    (``calibration_corpus``); a longer list is cut to ``quant.calibration_texts`` by the same seeded sample."""
    plan = plan_quant(plan)
    cfg, s = plan.config, plan.scheme
    encoders = retriever.encoders()
    fp32_bytes = sum(state_bytes(e.model) for e in encoders)
    n_params = sum(param_count(e.model) for e in encoders)  # as loaded: the "per parameter" of bits/param
    info: dict[str, Any] = {"scheme": cfg.name, "bits": cfg.bits}
    started = time.perf_counter()
    if s.kind == "cast":
        for e in encoders:
            e.model.to(s.dtype)
        info["effective_bits_per_param"] = 16.0
    elif s.kind == "none":
        info.update(_packed_info(encoders))
    else:
        if calibration:
            calibration = seeded_sample(calibration, cfg.calibration_texts, cfg.calibration_seed)
        check_quant_memory(retriever, plan, calibration)  # every encoder before the first is rounded
        info.update(_method_info(plan, calibration))
        reports = [
            quantize_model(e.model, e.tokenizer, cfg, calibration, e.settings.pooling, e.settings.max_length)
            for e in encoders
        ]
        params = sum(r["quantized_params"] for r in reports)
        bits = sum(r["effective_bits_per_param"] * r["quantized_params"] for r in reports) / params if params else None
        info.update(
            {
                "layers": [dict(layer, encoder=i) for i, r in enumerate(reports) for layer in r["layers"]],
                "quantized_params": params,
                "effective_bits_per_param": bits,
                "bnb_4bit_compute_dtype_ran": reports[0]["bnb_4bit_compute_dtype_ran"],
            }
        )
        if cfg.refine_steps:
            info["refine"] = [r["refine"] for r in reports]
        if s.kind == "bnb" and s.bits == 4:
            info["bnb_4bit_compute_dtype_requested"] = cfg.compute_dtype
    info["quantize_s"] = round(time.perf_counter() - started, 3)
    info.update(model_sizes(encoders, n_params))
    info["fp32_model_bytes"] = fp32_bytes
    return info


def check_quant_memory(retriever, plan, calibration: list[str] | None) -> None:
    """One ``error:`` line when GPTQ or refinement of any encoder cannot fit in the memory available now
    (``medret.quant.memory``); cheap (the calibration texts tokenized), so a run can call it before its fp32 pass."""
    plan = plan_quant(plan)
    if not plan.needs_calibration or not calibration or plan.scheme.kind in ("none", "cast"):
        return
    calibration = seeded_sample(calibration, plan.config.calibration_texts, plan.config.calibration_seed)
    for e in retriever.encoders():
        specs = layer_specs(e.model, plan.config)
        check_memory(e.model, e.tokenizer, specs, plan.config, calibration, e.settings.max_length)


def _method_info(plan: QuantPlan, calibration: list[str] | None) -> dict[str, Any]:
    """How the weights were rounded (the method and its own options), and from how many corpus texts."""
    cfg = plan.config
    used = len(calibration or []) if plan.needs_calibration else 0
    info: dict[str, Any] = {"method": cfg.method, "calibration_texts_used": used}
    if used:
        info["calibration_seed"] = cfg.calibration_seed
    info.update({k: getattr(cfg, k) for k in plan.method.options})
    return info


def model_sizes(encoders: list, n_params: int) -> dict[str, Any]:
    """Whole-model bytes, by part, and bits per parameter over every parameter of the model."""
    parts = dict.fromkeys(PARTS, 0)
    for e in encoders:
        for k, v in bytes_by_part(e.model).items():
            parts[k] += v
    total = sum(parts.values())
    return {
        "model_bytes": total,
        "bytes_by_part": parts,
        "params_all": n_params,
        "effective_bits_per_param_all": 8 * total / n_params if n_params else None,
    }


def decode_resident(retriever, cfg) -> dict[str, Any]:
    """``quant.decode=once``: packed custom weights decoded once into dense fp32 modules (fp32 speed);
    the sizes reported stay those of the packed model. Returns what ran and what is resident."""
    cfg = as_config(cfg)
    n = 0
    if cfg.decode == "once":
        n = sum(decode_once(e.model) for e in retriever.encoders())
    return {
        "decode": cfg.decode if n else "none",
        "decoded_modules": n,
        "resident_bytes": sum(state_bytes(e.model) for e in retriever.encoders()),
    }
