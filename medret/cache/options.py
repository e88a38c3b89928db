"""The cache options every entry point checks before any work (evaluate, train, the sensitivity scan)."""

from __future__ import annotations

from typing import Any

from medret.errors import InputError


def check_cache_options(cfg: Any) -> None:
    c = cfg.cache
    if c.shard_size < 1:
        raise InputError(f"cache.shard_size={c.shard_size}: expected a positive number of records")
    if c.dtype not in ("float16", "float32"):
        raise InputError(f"cache.dtype={c.dtype!r}: expected float16 or float32")
    if c.only_shard is not None and c.only_shard < 0:
        raise InputError(f"cache.only_shard={c.only_shard}: expected a shard number >= 0")
    if cfg.seed < 0:
        raise InputError(f"seed={cfg.seed}: expected an integer >= 0")
