"""Config errors that need no model: raised before anything is loaded, each one ``error:`` line."""

from __future__ import annotations

from dataclasses import replace

import torch

from medret.config import QuantConfig
from medret.errors import InputError
from medret.quant.bnb import BNB_DEVICES
from medret.quant.options import as_config, needs_calibration
from medret.quant.registry import method, names, scheme
from medret.quant.rotate import KINDS


def _check_custom(cfg: QuantConfig) -> None:
    if cfg.bits is None or not 2 <= cfg.bits <= 8:
        raise InputError(f"quant.bits={cfg.bits}: scheme {cfg.name} needs an integer width in 2..8")
    if cfg.granularity not in ("tensor", "channel", "group", "rows"):
        raise InputError(f"quant.granularity={cfg.granularity!r}: expected tensor, channel, group or rows")
    if cfg.granularity == "group" and cfg.group_size < 2:
        raise InputError(f"quant.group_size={cfg.group_size}: expected at least 2")
    if cfg.granularity == "rows" and (
        isinstance(cfg.group_size, bool) or not isinstance(cfg.group_size, int) or cfg.group_size < 1
    ):
        raise InputError(f"quant.group_size={cfg.group_size!r}: under granularity=rows, the rows per group (>= 1)")
    if not 0.0 <= cfg.outlier_fraction < 0.5:
        raise InputError(f"quant.outlier_fraction={cfg.outlier_fraction}: expected 0 <= fraction < 0.5")
    m = method(cfg.method)
    if m.check is not None:
        m.check(cfg)


def _check_refine(cfg: QuantConfig, kind: str) -> None:
    if isinstance(cfg.refine_steps, bool) or not isinstance(cfg.refine_steps, int) or cfg.refine_steps < 0:
        raise InputError(f"quant.refine_steps={cfg.refine_steps!r}: expected an integer >= 0 (0 = no refinement)")
    if cfg.refine_steps and not cfg.refine_lr > 0:
        raise InputError(f"quant.refine_lr={cfg.refine_lr}: expected a learning rate > 0")
    if cfg.refine_steps and kind != "custom":
        raise InputError(
            f"quant.refine_steps: refines the packed floats of the custom schemes ({', '.join(names('custom'))}), "
            f"not quant={cfg.name}"
        )


def _check_bnb(cfg: QuantConfig, device: str) -> None:
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device).type
    if dev not in BNB_DEVICES:
        raise InputError(
            f"quant.name={cfg.name}: bitsandbytes cannot run on device {dev!r} (supported: {', '.join(BNB_DEVICES)})"
        )
    if cfg.compute_dtype not in ("float32", "float16", "bfloat16"):
        raise InputError(f"quant.compute_dtype={cfg.compute_dtype!r}: expected float32, float16 or bfloat16")


def _check_calibration(cfg: QuantConfig) -> None:
    """The corpus texts GPTQ's Hessians, Fisher weights and refinement read."""
    if needs_calibration(cfg) and cfg.calibration_texts < 2:
        raise InputError(f"quant.calibration_texts={cfg.calibration_texts}: expected at least 2 corpus texts")
    if isinstance(cfg.calibration_seed, bool) or not isinstance(cfg.calibration_seed, int):
        raise InputError(f"quant.calibration_seed={cfg.calibration_seed!r}: expected an integer")


def _check_rotate(cfg: QuantConfig, kind: str) -> None:
    if cfg.rotate not in KINDS:
        raise InputError(f"quant.rotate={cfg.rotate!r}: expected {' or '.join(KINDS)}")
    if isinstance(cfg.rotate_seed, bool) or not isinstance(cfg.rotate_seed, int):
        raise InputError(f"quant.rotate_seed={cfg.rotate_seed!r}: expected an integer")
    if cfg.rotate == "none" or kind == "none":  # none: the module is left as it is, rotated or not
        return
    if kind != "custom":
        raise InputError(
            f"quant.rotate={cfg.rotate}: rotates the weights the custom schemes ({', '.join(names('custom'))}) "
            f"round, not quant={cfg.name}"
        )
    fisher = [n for n in (cfg.name, cfg.base) if n is not None and scheme(n).calibrated]
    if fisher:  # squared gradients are of the original weights: no exact counterpart in the rotated basis
        raise InputError(
            f"quant.rotate={cfg.rotate}: {fisher[0]}'s Fisher weights are of unrotated weights; use rotate=none"
        )


def _check_placement(cfg: QuantConfig, kind: str) -> None:
    if cfg.grid is not None:  # quant=auto resolves it into the concrete scheme before any check
        raise InputError(f"quant.grid: only quant=auto takes a grid (this run's scheme is quant={cfg.name})")
    if cfg.decode not in ("once", "per_forward"):
        raise InputError(f"quant.decode={cfg.decode!r}: expected once or per_forward")
    if cfg.save_dir and kind != "custom":
        raise InputError(
            f"quant.save_dir: only the custom schemes ({', '.join(names('custom'))}) are saved, not {cfg.name}"
        )


def validate(cfg: QuantConfig, device: str = "auto") -> None:
    """Every quant option, top level and each override, against its scheme and rounding method."""
    cfg = as_config(cfg)
    s = scheme(cfg.name)
    if s.kind == "custom":
        _check_custom(cfg)
    elif cfg.method != "rtn" and s.kind != "none":  # none: the module is left as it is, by any method
        raise InputError(f"quant.method={cfg.method}: needs a custom scheme (a grid it fits), not quant={cfg.name}")
    else:
        method(cfg.method)  # an unknown name is an error under any scheme
    _check_refine(cfg, s.kind)
    _check_calibration(cfg)
    if s.kind == "bnb":
        _check_bnb(cfg, device)
    if s.check is not None:
        s.check(cfg)
    _check_placement(cfg, s.kind)
    _check_rotate(cfg, s.kind)
    from medret.quant.embedding_tiers import check_embedding_options  # imports layers: late

    check_embedding_options(cfg)
    for pattern, spec in cfg.overrides.items():
        if not isinstance(spec, dict) or not set(spec) <= set(QuantConfig.__dataclass_fields__):
            raise InputError(f"quant.overrides[{pattern!r}]: expected a mapping of quant options, got {spec!r}")
        validate(replace(cfg, **spec, overrides={}), device)
