"""Files written atomically, and content hashes: the one home every writer and every cache key uses.

A killed run leaves the previous file (or none), never half of one; a full disk is one error line
naming the path, not a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medret.errors import InputError


def _disk_error(path: Path, e: OSError) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return InputError(f"{path}: disk full while writing (free space or choose another folder)")
    if e.errno == errno.EFBIG:  # a file-size limit (ulimit -f, a quota on file size)
        return InputError(f"{path}: file too large for this file system or limit (choose another folder)")
    return e


def write_atomic(path: Path, chunks: Iterable[str | bytes]) -> None:
    """Write text or bytes chunks to a temp file beside ``path``, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for c in chunks:
                fh.write(c.encode("utf-8") if isinstance(c, str) else c)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _disk_error(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, [json.dumps(obj, indent=2, sort_keys=False), "\n"])


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, (json.dumps(r) + "\n" for r in rows))


@contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Fill a temp folder beside ``out``; on success it replaces ``out`` whole, on failure it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        raise _disk_error(out, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(obj, length: int = 32) -> str:
    """A stable hash of JSON-able settings: cache keys, config hashes, adapter/quant identities."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
