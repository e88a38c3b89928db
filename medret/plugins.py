"""Registries fill themselves: every module of a package (schemes, runtime backends) registers on import."""

from __future__ import annotations

import functools
import importlib
import pkgutil


@functools.cache
def import_all(package: str, suffix: str = "") -> None:
    """Import, once, every module of ``package`` whose name ends with ``suffix``."""
    pkg = importlib.import_module(package)
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.endswith(suffix):
            importlib.import_module(f"{package}.{mod.name}")
