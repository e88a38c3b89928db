"""The registries of ``medret.quant``'s two extension points.

- Schemes (what a weight is stored as): one module that calls ``register`` plus one YAML in
  ``conf/quant/``.
- Rounding methods (how a weight is rounded to its scheme's grid: ``rtn``, ``gptq``, ``hqq``): one module
  that calls ``register_method``.

A scheme or method declares the ``quant.*`` options it reads, so cache identities, ``quant.grid``'s keys
and the checks derive from the declarations. Every module of ``medret.quant`` is imported on first
lookup, so nothing else needs editing to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from medret.errors import InputError
from medret.plugins import import_all

# (weight, spec: QuantConfig, group_size, importance or None) -> QuantState
QuantizeFn = Callable[..., object]


@dataclass(frozen=True)
class Scheme:
    name: str
    # none (weights as loaded) | cast (fp16/bf16) | bnb (bitsandbytes modules) | custom (packed QuantLinear)
    # | auto (a request resolved into a custom scheme with per-layer widths before anything is quantized)
    kind: str
    quantize: QuantizeFn | None = None  # custom: the pure quantize function, adapted to a QuantConfig
    bits: int | None = None  # fixed width (bitsandbytes); custom schemes take quant.bits
    dtype: torch.dtype | None = None  # casts
    calibrated: bool = False  # reads unlabelled corpus texts (Fisher weights)
    check: Callable[[object], None] | None = None  # extra option checks (raise InputError)
    qat: bool = True  # can be trained through (straight-through fake quantization)
    # the quant.* fields only this scheme reads (custom: also what quant.grid may set; auto: its request)
    options: tuple[str, ...] = ()
    # its state is codes on a fitted grid (codebook x scale + offset) another rounding (GPTQ) can round to
    rounds_to_grid: bool = True


@dataclass(frozen=True)
class Method:
    """How a custom scheme's weights are rounded to its grid."""

    name: str
    # per weight: (weight, spec, group_size, importance) -> QuantState; None: the scheme's own (round-to-nearest)
    fit: QuantizeFn | None = None
    # a pass over the whole model after every other layer is quantized (its inputs are theirs):
    # (model, tokenizer, specs by layer, calibration texts, max_length, importance) -> layer reports
    model_pass: Callable[..., list[dict]] | None = None
    options: tuple[str, ...] = ()  # the quant.* fields only this method reads
    calibrated: bool = False  # reads unlabelled corpus texts (GPTQ's Hessians)
    check: Callable[[object], None] | None = None  # the schemes and options it supports (raise InputError)


_SCHEMES: dict[str, Scheme] = {}
_METHODS: dict[str, Method] = {}


def register(scheme: Scheme) -> Scheme:
    _SCHEMES[scheme.name] = scheme
    return scheme


def register_method(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def _discover() -> None:
    import_all("medret.quant")


def names(kind: str | None = None) -> tuple[str, ...]:
    _discover()
    return tuple(n for n, s in _SCHEMES.items() if kind is None or s.kind == kind)


def scheme(name: str) -> Scheme:
    _discover()
    if name not in _SCHEMES:
        raise InputError(f"quant.name={name!r}: unknown scheme; expected one of {', '.join(_SCHEMES)}")
    return _SCHEMES[name]


def method_names() -> tuple[str, ...]:
    """The default (round-to-nearest) first, then by name: the same order whichever module was imported first."""
    _discover()
    return tuple(sorted(_METHODS, key=lambda n: (n != "rtn", n)))


def method(name: str) -> Method:
    _discover()
    if name not in _METHODS:
        *others, last = method_names()
        raise InputError(f"quant.method={name!r}: expected {', '.join(others)} or {last}")
    return _METHODS[name]


def scheme_options(kind: str) -> tuple[str, ...]:
    """Every option the schemes of ``kind`` declare, each once, in registration order."""
    return tuple(dict.fromkeys(o for n in names(kind) for o in scheme(n).options))


def method_options() -> tuple[str, ...]:
    return tuple(dict.fromkeys(o for n in method_names() for o in method(n).options))


register(Scheme("none", "none"))
register(Scheme("fp16", "cast", dtype=torch.float16))
register(Scheme("bf16", "cast", dtype=torch.bfloat16))
register_method(Method("rtn"))  # round-to-nearest: each scheme's own quantize
