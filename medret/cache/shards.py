"""Embedding shards on disk with a manifest: resumable, checksummed, safe for concurrent sweep jobs.

Layout: ``<root>/embeddings/<key>/manifest.json`` and per shard ``shard-00000.emb.npy`` (vectors)
and ``shard-00000.own.npy`` (the record each vector belongs to). Every file is written to a temp
name and renamed into place, and the manifest is updated under an exclusive file lock, so a killed
job leaves only whole shards and two jobs encoding the same corpus never corrupt each other.

Concurrent jobs split the work: a job claims a shard (``shard-00000.claim``: owner pid, host, a
heartbeat in its mtime) before encoding it, and a shard another live job holds is waited for and
read. A claim is stale, and taken over, when its process is gone (same host) or its heartbeat is
older than ``CLAIM_STALE_S`` (any host; also covers a reused pid).
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medret.errors import InputError
from medret.storage import digest, file_sha256, write_atomic, write_json

log = logging.getLogger(__name__)

CLAIM_STALE_S = 600.0  # a claim whose heartbeat is older than this is abandoned (a job on another host died)
HEARTBEAT_S = 30.0
_HOST = socket.gethostname()


def cache_root(configured: str | None) -> Path:
    root = configured or os.environ.get("MEDRET_CACHE_DIR") or Path.home() / ".cache" / "medret"
    return Path(root).expanduser()


def side_parts(parts: dict) -> dict:
    """What one side's embeddings depend on: the side a run names ``fp32_side`` (quant.side quantized the other)
    runs the weights as loaded, so it is keyed (and its manifest written) as the fp32 run's and reads the
    embeddings the fp32 baseline cached. Only evaluate's side split sets ``fp32_side``."""
    if parts.get("fp32_side") is not None and parts["fp32_side"] == parts.get("side"):
        return {**{k: v for k, v in parts.items() if k != "fp32_side"}, "quant": {"name": "none"}}
    return parts


def cache_key(parts: dict) -> str:
    return digest(side_parts(parts), 32)


def ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe."):
            pass
    except OSError as e:
        raise InputError(f"cache.dir={root}: not writable ({e.strerror}); set cache.dir or MEDRET_CACHE_DIR") from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _valid_entry(entry) -> bool:
    return (
        isinstance(entry, dict)
        and all(_is_int(entry.get(k)) for k in ("rows", "dim"))
        and all(isinstance(entry.get(k), str) for k in ("emb_sha256", "own_sha256"))
    )


def parse_manifest(path: Path) -> dict:
    """The manifest, or {} (not cached, with a warning) when it is damaged: truncated JSON, wrong types.
    A manifest that cannot be read at all (a folder, no permission) is one error line."""
    if not path.exists():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = ""
    except OSError as e:
        raise InputError(f"{path}: cannot read the cache manifest ({e.strerror}); delete it to re-encode") from None
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    typed = isinstance(shards, dict) and isinstance(manifest.get("meta"), dict)
    typed = typed and isinstance(manifest.get("dtype"), str) and _is_int(manifest.get("num_records"))
    if not typed or not _is_int(manifest.get("shard_size")):
        log.warning("%s: damaged cache manifest (not a JSON manifest): treating the cache as empty", path)
        return {}
    bad = [k for k, e in shards.items() if not (k.isdigit() and _valid_entry(e))]
    if bad:
        log.warning("%s: %d damaged shard entries in the cache manifest: re-encoding them", path, len(bad))
        manifest["shards"] = {k: e for k, e in shards.items() if k not in bad}
    return manifest


def _claim_is_stale(path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
        holder = json.loads(path.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):  # half-written by a job killed while claiming
        return age > HEARTBEAT_S
    if age > CLAIM_STALE_S:
        return True
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _write_npy_atomic(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)  # numpy's own short-write error carries no errno: write the bytes ourselves
    write_atomic(path, [buf.getbuffer()])


class ShardStore:
    """Shards of ``shard_size`` records each; ``meta`` must match for the store to be reused."""

    def __init__(self, root: Path, key: str, meta: dict, num_records: int, shard_size: int, dtype: str):
        if dtype not in ("float16", "float32"):
            raise InputError(f"cache.dtype={dtype!r}: expected float16 or float32")
        if shard_size < 1:
            raise InputError(f"cache.shard_size={shard_size}: expected a positive number of records")
        ensure_writable(root)
        self.dir = root / "embeddings" / key
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = side_parts(meta)  # as cache_key read it: an fp32 side matches the fp32 run's manifest
        self.meta, self.num_records, self.shard_size, self.dtype = meta, num_records, shard_size, dtype
        self.num_shards = max(1, -(-num_records // shard_size))
        with self._locked() as manifest:
            if manifest and (
                manifest.get("meta") != meta
                or manifest.get("shard_size") != shard_size
                or manifest.get("num_records") != num_records
                or manifest.get("dtype") != dtype
            ):
                raise InputError(
                    f"{self.dir / 'manifest.json'}: manifest was written for another config "
                    f"(delete the folder to re-encode)"
                )
            if not manifest:
                self._write_manifest(
                    {"meta": meta, "num_records": num_records, "shard_size": shard_size, "dtype": dtype, "shards": {}}
                )

    @contextmanager
    def _locked(self):
        with open(self.dir / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield parse_manifest(self.dir / "manifest.json")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write_manifest(self, manifest: dict) -> None:
        write_json(self.dir / "manifest.json", manifest)

    def record_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_size, min((i + 1) * self.shard_size, self.num_records)

    def _paths(self, i: int) -> tuple[Path, Path]:
        return self.dir / f"shard-{i:05d}.emb.npy", self.dir / f"shard-{i:05d}.own.npy"

    def load(self, i: int, verify: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        """(float32 vectors, owners) of a complete, uncorrupted shard; None when it must be encoded."""
        with self._locked() as manifest:
            entry = manifest.get("shards", {}).get(str(i))
        if entry is None:
            return None
        emb_p, own_p = self._paths(i)
        try:
            if verify and (file_sha256(emb_p) != entry["emb_sha256"] or file_sha256(own_p) != entry["own_sha256"]):
                raise ValueError("checksum mismatch")
            emb, own = np.load(emb_p, allow_pickle=False), np.load(own_p, allow_pickle=False)
            if len(emb) != entry["rows"] or len(own) != entry["rows"]:
                raise ValueError("row count mismatch")
        except (OSError, ValueError) as e:
            log.warning("shard %d in %s is corrupt or truncated (%s): re-encoding it", i, self.dir, e)
            self.forget(i)
            return None
        return emb.astype(np.float32, copy=False), own

    def save(self, i: int, emb: np.ndarray, owners: np.ndarray) -> None:
        emb_p, own_p = self._paths(i)
        _write_npy_atomic(emb_p, emb.astype(self.dtype))
        _write_npy_atomic(own_p, owners.astype(np.int64))
        entry = {
            "rows": int(len(emb)),
            "dim": int(emb.shape[1]) if emb.ndim == 2 else 0,
            "emb_sha256": file_sha256(emb_p),
            "own_sha256": file_sha256(own_p),
        }
        with self._locked() as manifest:
            manifest["shards"][str(i)] = entry
            self._write_manifest(manifest)

    def _claim_path(self, i: int) -> Path:
        return self.dir / f"shard-{i:05d}.claim"

    def claim(self, i: int) -> str:
        """``done`` (in the manifest), ``mine`` (this job now holds it) or ``busy`` (a live job holds it)."""
        with self._locked() as manifest:
            if str(i) in manifest.get("shards", {}):
                return "done"
            path = self._claim_path(i)
            if path.exists() and not _claim_is_stale(path):
                return "busy"
            if path.exists():
                log.info("shard %d in %s: taking over a stale claim", i, self.dir)
            # under the lock, so two jobs never both take over one stale claim
            write_json(path, {"pid": os.getpid(), "host": _HOST, "since": time.time()})
            return "mine"

    def release(self, i: int) -> None:
        with self._locked():
            self._claim_path(i).unlink(missing_ok=True)

    @contextmanager
    def holding(self, i: int):
        """While encoding a claimed shard: refresh the claim's heartbeat; release it at the end."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self._claim_path(i))
                except OSError:
                    return

        t = threading.Thread(target=beat, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            self.release(i)

    def forget(self, i: int) -> None:
        with self._locked() as manifest:
            if manifest.get("shards", {}).pop(str(i), None) is not None:
                self._write_manifest(manifest)

    def complete(self) -> bool:
        with self._locked() as manifest:
            return len(manifest.get("shards", {})) == self.num_shards

    def iter_vectors(self) -> Iterator[np.ndarray]:
        for i in range(self.num_shards):
            got = self.load(i, verify=False)
            if got is None:
                raise InputError(f"{self.dir}: shard {i} disappeared while reading (another job deleted it?)")
            yield got[0]
