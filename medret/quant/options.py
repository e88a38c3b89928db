"""The quant options: the typed config, what identifies its weights, what reads corpus texts.

Which option belongs to whom is declared in the registries (a scheme's or a method's ``options``); the
groups below are the options every custom scheme shares.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf

from medret.config import QuantConfig
from medret.quant.registry import method, method_names, method_options, scheme, scheme_options

log = logging.getLogger(__name__)

PLACEMENT = ("save_dir", "decode")  # where the weights are saved and when decoded: no embedding changes
CALIBRATION = ("calibration_texts", "calibration_seed")  # which corpus texts a calibrated quantization reads
REFINEMENT = ("refine_steps", "refine_lr")  # after rounding, by any method: the stored floats fitted to fp32
GRID_SHAPE = ("granularity", "group_size", "outlier_fraction")  # every custom scheme's grid layout
ROTATION = ("rotate", "rotate_seed")  # before rounding, by any method: the basis the weights are rounded in
TABLE = ("embeddings", "embedding_bits", "embedding_tiers")  # the word-embedding table: plain or in frequency tiers
# options added after caches existed: at these values they stay out of identities, so older cache keys hold
QUIET_DEFAULTS = {"embeddings": False, "calibration_seed": 0, "method": "rtn", "side": "both"}
QUIET_DEFAULTS |= {"rotate": "none", "rotate_seed": 0}
QUIET_DEFAULTS |= {"embedding_bits": None, "embedding_tiers": None}


def as_config(cfg: Any) -> QuantConfig:
    if isinstance(cfg, QuantConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantConfig), cfg))


def quant_identity(cfg) -> dict:
    """The quant settings that change the weights (cache keys, adapter checks): not where they are saved,
    not quant=auto's request (resolved before), not a method's options under another method."""
    cfg = as_config(cfg)
    d = dataclasses.asdict(cfg)
    drop = {*PLACEMENT, *scheme_options("auto")}
    drop |= {o for n in method_names() if n != cfg.method for o in method(n).options}
    if d["refine_steps"] == 0:  # keeps the cache keys of runs from before refinement existed
        drop |= set(REFINEMENT)
    drop |= {k for k, quiet in QUIET_DEFAULTS.items() if d[k] == quiet}
    if d["rotate"] == "none":  # no rotation: its seed draws nothing
        drop.add("rotate_seed")
    out = {k: v for k, v in d.items() if k not in drop}
    grains = {d["granularity"], *(o.get("granularity") for o in (d["overrides"] or {}).values())}
    if d["refine_steps"] and "tensor" in grains:  # refinement has tuned a whole matrix's k-means codebook since
        out["refine_tensor_codebook"] = True  # it was held fixed: no cache entry of the old weights is reused
    return out


def grid_keys() -> tuple[str, ...]:
    """What ``quant.grid`` may set: the scheme's name, its grid layout and the custom schemes' own options."""
    allowed = {"name", *GRID_SHAPE, *scheme_options("custom")}
    return tuple(k for k in QuantConfig.__dataclass_fields__ if k in allowed)


def run_fields() -> tuple[str, ...]:
    """How quant=auto's chosen widths are rounded, refined and kept: the run's own options, never the scan's."""
    return (*PLACEMENT, "method", *CALIBRATION, *method_options(), *REFINEMENT, *ROTATION)


def module_specs(cfg) -> list[QuantConfig]:
    """The top-level spec and every override applied over it (what some module may run)."""
    cfg = as_config(cfg)
    return [cfg, *(replace(cfg, **over, overrides={}) for over in cfg.overrides.values())]


def spec_calibrated(spec: QuantConfig) -> bool:
    """Whether this spec's scheme (or its base) or rounding method reads corpus texts."""
    schemes = (n for n in (spec.name, spec.base) if n is not None)
    return method(spec.method).calibrated or any(scheme(n).calibrated for n in schemes)


def needs_calibration(cfg) -> bool:
    """Whether any module (top level or an override) reads corpus texts: Fisher weights, GPTQ's Hessians or
    refinement's fp32 targets."""
    if as_config(cfg).embeddings and as_config(cfg).embedding_bits:  # frequency tiers: the texts' token counts
        return True
    return as_config(cfg).refine_steps > 0 or any(spec_calibrated(spec) for spec in module_specs(cfg))


def drop_unused_bits(cfg: QuantConfig) -> None:
    """``quant.bits`` under a scheme without a bit width (none, casts) is ignored: warned once and set to
    null, so results.json and the W&B tags never report a width that was not used."""
    if cfg.bits is not None and scheme(cfg.name).kind in ("none", "cast"):
        log.warning("quant.bits=%s is ignored by quant=%s (it has no bit width); recorded as null", cfg.bits, cfg.name)
        cfg.bits = None
