"""Embedding shards on disk with a manifest: resumable, checksummed, safe for concurrent sweep jobs.

Layout: ``<root>/embeddings/<key>/manifest.json`` and per shard ``shard-00000.emb.npy`` (vectors)
and ``shard-00000.own.npy`` (the record each vector belongs to). Every file is written to a temp
name and renamed into place, and the manifest is updated under an exclusive file lock, so a killed
job leaves only whole shards and two jobs encoding the same corpus never corrupt each other.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medret.errors import InputError
from medret.storage import digest, file_sha256, write_atomic, write_json

log = logging.getLogger(__name__)


def cache_root(configured: str | None) -> Path:
    root = configured or os.environ.get("MEDRET_CACHE_DIR") or Path.home() / ".cache" / "medret"
    return Path(root).expanduser()


def cache_key(parts: dict) -> str:
    return digest(parts, 32)


def ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe."):
            pass
    except OSError as e:
        raise InputError(f"cache.dir={root}: not writable ({e.strerror}); set cache.dir or MEDRET_CACHE_DIR") from None


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
                path = self.dir / "manifest.json"
                yield json.loads(path.read_text()) if path.is_file() else {}
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
