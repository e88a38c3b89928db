"""One registry of quantization schemes: a scheme is one module that calls ``register`` plus one YAML
in ``conf/quant/``. Every module of ``medret.quant`` is imported on first lookup, so nothing else
needs editing to add one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import torch

from medret.errors import InputError

# (weight, spec: QuantConfig, group_size, importance or None) -> QuantState
QuantizeFn = Callable[..., object]


@dataclass(frozen=True)
class Scheme:
    name: str
    kind: str  # none | cast | bnb | custom
    quantize: QuantizeFn | None = None  # custom: the pure quantize function, adapted to a QuantConfig
    bits: int | None = None  # fixed width (bitsandbytes); custom schemes take quant.bits
    dtype: torch.dtype | None = None  # casts
    calibrated: bool = False  # needs unlabelled corpus texts (Fisher-weighted)
    check: Callable[[object], None] | None = None  # extra option checks (raise InputError)
    qat: bool = True  # can be trained through (straight-through fake quantization)


_SCHEMES: dict[str, Scheme] = {}
_discovered = False


def register(scheme: Scheme) -> Scheme:
    _SCHEMES[scheme.name] = scheme
    return scheme


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import medret.quant as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")


def names(kind: str | None = None) -> tuple[str, ...]:
    _discover()
    return tuple(n for n, s in _SCHEMES.items() if kind is None or s.kind == kind)


def scheme(name: str) -> Scheme:
    _discover()
    if name not in _SCHEMES:
        raise InputError(f"quant.name={name!r}: unknown scheme; expected one of {', '.join(_SCHEMES)}")
    return _SCHEMES[name]


register(Scheme("none", "none"))
register(Scheme("fp16", "cast", dtype=torch.float16))
register(Scheme("bf16", "cast", dtype=torch.bfloat16))
