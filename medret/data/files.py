"""Readers for BEIR layout and generic JSONL/CSV record sets, with line-precise errors."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

from medret.data.dataset import Qrels
from medret.errors import InputError


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def find_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{folder}: no {stem}.jsonl or {stem}.jsonl.gz (BEIR layout expected)")


def iter_records(path: Path, id_field: str = "_id") -> Iterator[tuple[int, dict]]:
    """(line number, record) from JSONL (optionally gzipped) or CSV with a header."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    name = path.name.removesuffix(".gz")
    with _open_text(path) as fh:
        if name.endswith(".csv"):
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or id_field not in reader.fieldnames:
                raise InputError(f"{path}:1: CSV header must name an {id_field!r} column")
            for row in reader:
                yield reader.line_num, row
            return
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.pos + 1})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def read_texts(
    path: Path, text_fields: tuple[str, ...], required: str, id_field: str = "_id"
) -> tuple[list[str], list[str]]:
    """ids and texts; text = the present fields of ``text_fields`` joined by a space."""
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for lineno, rec in iter_records(path, id_field):
        rid = rec.get(id_field)
        if rid is None or str(rid) == "":
            raise InputError(f"{path}:{lineno}: missing field {id_field!r} (a non-empty id)")
        rid = str(rid)
        if rid in seen:
            raise InputError(f"{path}:{lineno}: duplicate id {rid!r} (first on line {seen[rid]})")
        seen[rid] = lineno
        if not isinstance(rec.get(required), str):
            raise InputError(f"{path}:{lineno}: missing field {required!r} (a string)")
        parts = [rec[f] for f in text_fields if isinstance(rec.get(f), str) and rec[f]]
        ids.append(rid)
        texts.append(" ".join(parts))
    return ids, texts


def read_qrels(path: Path) -> Qrels:
    """TREC-style TSV: query-id, corpus-id, score (optional header line); 4-column TREC qrels too."""
    if not path.is_file():
        raise InputError(f"{path}: qrels file not found")
    qrels: Qrels = {}
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            cols = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            if not cols or not line.strip():
                continue
            if lineno == 1 and not cols[-1].lstrip("-").isdigit():
                continue  # header
            if len(cols) == 4:  # TREC: qid 0 docid rel
                cols = [cols[0], cols[2], cols[3]]
            if len(cols) != 3:
                raise InputError(f"{path}:{lineno}: expected 3 tab-separated columns query-id, corpus-id, score")
            try:
                grade = int(cols[2])
            except ValueError:
                raise InputError(f"{path}:{lineno}: score must be an integer, got {cols[2]!r}") from None
            qrels.setdefault(cols[0], {})[cols[1]] = grade
    return qrels
