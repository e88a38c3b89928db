"""What ran where: library versions, the git commit, the device and peak memory of a run."""

from __future__ import annotations

import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import medret

PACKAGES = ("torch", "transformers", "faiss-cpu", "faiss-gpu-cu12", "numpy", "bitsandbytes", "hydra-core", "wandb")


def versions(packages: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """Installed versions. Default: python, medret and the PACKAGES found (a run's provenance). Given
    ``packages``: each of them, None where one is not installed (a cache key changes when one appears)."""
    if packages is None:
        found = {k: v for k, v in versions(PACKAGES).items() if v is not None}
        return {"python": platform.python_version(), "medret": medret.__version__, **found}
    out: dict[str, str | None] = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> dict[str, Any]:
    root = Path(medret.__file__).resolve().parent.parent
    git = lambda *args: subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)  # noqa: E731
    try:
        head = git("rev-parse", "HEAD")
        head.check_returncode()
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip() != ""
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def peak_memory(device: torch.device) -> dict[str, int]:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def device_info(device: torch.device, placement: str) -> dict[str, Any]:
    info: dict[str, Any] = {"encoder": str(device), "index": placement, "cpu_threads": torch.get_num_threads()}
    info["faiss_simd"] = faiss_simd_level()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def faiss_simd_level() -> str | None:
    """The SIMD code faiss runs (AVX2, AVX512, ... or NONE): a slow generic build shows here."""
    import faiss

    try:  # faiss >= 1.11 is one dynamic-dispatch build that picks its level at run time
        return str(faiss.SIMDConfig.get_level_name())
    except AttributeError:  # older wheels: one module per level; the one the loader imported is the one used
        loaded = [lvl for lvl in ("avx512_spr", "avx512", "avx2") if f"faiss.swigfaiss_{lvl}" in sys.modules]
        return loaded[0].upper() if loaded else "NONE"
