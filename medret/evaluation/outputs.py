"""Run outputs written atomically: a killed run leaves the previous file or none, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_atomic(path: Path, chunks: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for c in chunks:
                fh.write(c)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    write_atomic(path, [json.dumps(obj, indent=2, sort_keys=False), "\n"])


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_atomic(path, (json.dumps(r) + "\n" for r in rows))


def write_trec_run(path: Path, run: dict[str, list[tuple[str, float]]], tag: str) -> None:
    """TREC run format: qid Q0 docid rank score tag."""
    write_atomic(
        path,
        (f"{q} Q0 {d} {i} {float(s)!r} {tag}\n" for q, hits in run.items() for i, (d, s) in enumerate(hits, 1)),
    )
