"""One registry of runtime backends: a runtime is one module ``medret/runtime/<name>_backend.py`` that calls
``register`` plus one YAML in ``conf/runtime/``. Those modules are imported on first lookup, so nothing
else needs editing to add one (a test may also register one of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medret.config import RuntimeConfig
from medret.errors import InputError
from medret.plugins import import_all


@dataclass(frozen=True)
class BuildJob:
    """What a backend builds from besides the encoder and its options."""

    cache_dir: Path  # the runtime's cache folder (builds go under cache_dir/runtime)
    weights_key: str  # identifies the encoder's weights as loaded and quantized in torch
    calibration: list[str] | None  # the sampled corpus texts when the mode is calibrated, else None


class Backend(Protocol):
    """A place an encoder runs. ``validate`` checks the shared options (mode, precision, provider, threads,
    calibration size) against the attributes, then calls ``check``; ``build_runtime`` calls ``build``."""

    name: str
    modes: tuple[str, ...]  # runtime.quantize values; the first is the unquantized one
    precisions: tuple[str, ...]  # runtime.precision values (precision of the float ops)
    calibrated: tuple[str, ...]  # modes that need corpus texts
    libraries: tuple[str, ...]  # every package it may import: their versions go in results.json
    hint: str  # appended to a bad runtime.quantize's message

    def modules(self, cfg: RuntimeConfig) -> list[str]:
        """The Python modules this configuration imports (checked before anything heavy)."""
        ...

    def check(self, cfg: RuntimeConfig) -> None:
        """Its own options; raise InputError (one line). Loads no model."""
        ...

    def build(self, encoder: Any, cfg: RuntimeConfig, job: BuildJob) -> tuple[Any, dict[str, Any]]:
        """(an encoder with TextEncoder's interface, the results.json block: name, quantize, quantization...)."""
        ...


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def _discover() -> None:
    import_all("medret.runtime", "_backend")


def names() -> tuple[str, ...]:
    _discover()
    return tuple(_BACKENDS)


def backend(name: str) -> Backend:
    _discover()
    if name not in _BACKENDS:
        raise InputError(f"runtime.name={name!r}: expected one of {', '.join(_BACKENDS)}")
    return _BACKENDS[name]
