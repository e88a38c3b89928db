"""Build folders of the runtime cache: their keys, and builds that a killed process never leaves half done.

``<cache>/runtime/<export key>/`` holds the fp32 ONNX export; ``<variant key>/`` a backend's converted or
quantized files. A folder is finished when its META file exists (written last, renamed into place whole).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medret.runtime.info import runtime_versions
from medret.runtime.options import MIN_OPSET
from medret.storage import digest

log = logging.getLogger(__name__)

META = "meta.json"  # written last: a folder without it is not a finished build
EXPORT_FORMAT = 2  # bump when export_onnx writes a different graph for the same weights
KEY_LENGTH = 16  # hex digits of a folder's digest


def export_key(weights_key: str, settings: Any, opset: int) -> str:
    """What the fp32 graph depends on: the weights, pooling, normalisation, opset and the exporter."""
    parts = {
        "weights": weights_key,
        "pooling": settings.pooling,
        "normalize": bool(settings.normalize),
        "opset": max(opset, MIN_OPSET),
        "torch": runtime_versions()["torch"],
        "format": EXPORT_FORMAT,
    }
    return f"onnx-{digest(parts, KEY_LENGTH)}"


def variant_key(base: str, name: str, quantize: str, calib_digest: str | None, extra: dict[str, Any] | None) -> str:
    """The deployed files: the export plus the backend's conversion/quantization settings (``extra``: its
    library versions and options; None when the export itself is the deployed model). Threads and
    provider are load-time choices, not part of the files."""
    if extra is None:
        return base
    parts: dict[str, Any] = {"base": base, "name": name, "quantize": quantize, "calibration": calib_digest, **extra}
    return f"{name}-{quantize}-{digest(parts, KEY_LENGTH)}"


def model_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files a deployment ships (graph, weights, external data), not our meta.json."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in suffixes or p.name.endswith(".data")))


DEBRIS = re.compile(r"^\.(?P<key>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
STALE_S = 24 * 3600  # a temp folder of another host is debris after a day (no build takes that long)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_debris(root: Path) -> list[Path]:
    """Remove temp build folders a killed process left in ``root``: this host's whose process is gone,
    any host's older than a day (a shared cache may sit on a cluster file system). Returns what went."""
    gone = []
    host = socket.gethostname()
    for p in root.glob(".*.tmp-*") if root.is_dir() else ():
        m = DEBRIS.match(p.name)
        if not m or not p.is_dir():
            continue
        dead = not _alive(int(m["pid"])) if m["host"] == host else time.time() - p.stat().st_mtime > STALE_S
        if dead:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    if gone:
        log.info("removed %d temp folder(s) left by killed runtime builds in %s", len(gone), root)
    return gone


def build_atomic(folder: Path, make: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Run ``make(tmp)`` into a fresh temp folder, write META, then rename it into place: a killed build is
    never read as done. Returns (meta, cached)."""
    meta_path = folder / META
    if meta_path.is_file():
        return json.loads(meta_path.read_text()), True
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_debris(folder.parent)
    tmp = folder.with_name(f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        meta = make(tmp)
        meta["build_s"] = round(time.perf_counter() - t0, 3)
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if folder.exists() and not meta_path.is_file():
            shutil.rmtree(folder)  # a folder without META is debris from an older crash
        try:
            os.replace(tmp, folder)
        except OSError:
            if not meta_path.is_file():
                raise
            # another process finished the same build first: theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
            return json.loads(meta_path.read_text()), True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta, False
