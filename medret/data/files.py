"""Readers for BEIR layout and generic JSONL/CSV record sets, with line-precise errors."""

from __future__ import annotations

import csv
import errno
import gzip
import json
import logging
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

from medret.data.dataset import Qrels
from medret.errors import InputError

log = logging.getLogger(__name__)

# clinical notes can be long: a CSV field may hold up to this many characters (Python's default is 128 KiB)
CSV_FIELD_LIMIT = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"
MAX_GRADE = 127  # grades are stored as int8 (medret/data/judgements.py)
# leading bytes of containers that are not text; named so the message says what the file is
_NOT_TEXT = {
    b"PK\x03\x04": "a zip archive or xlsx/docx/ods spreadsheet",
    b"\xd0\xcf\x11\xe0": "an old Office document (xls/doc)",
    b"BZh": "bzip2-compressed",
    b"\xfd7zXZ\x00": "xz-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"%PDF": "a PDF document",
}


def check_file(path: Path) -> None:
    """An existing, readable regular file; a loop, dangling link or directory named for what it is."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{path}: symbolic link loop (the link points back to itself)") from None
        if path.is_symlink():
            raise InputError(f"{path}: broken symbolic link (its target does not exist)") from None
        raise InputError(f"{path}: file not found") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory, expected a file")


def _binary_lines(path: Path) -> Iterator[bytes]:
    """The file's raw lines: gzip is recognised by its content, whatever the name says."""
    check_file(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    for magic, what in _NOT_TEXT.items():
        if head.startswith(magic):
            raise InputError(f"{path}: {what}, not text; export it as UTF-8 CSV or JSONL (gzip allowed)")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"{path}: UTF-16 text; save it as UTF-8")
    if not head.startswith(b"\x1f\x8b"):
        if path.suffix == ".gz":
            raise InputError(f"{path}: named .gz but not gzip-compressed (rename it without .gz, or gzip it)")
        with open(path, "rb") as fh:
            yield from fh
        return
    lineno = 0
    try:
        with gzip.open(path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):  # noqa: B007 (read in the except clause)
                yield line
    except (OSError, EOFError, zlib.error):
        raise InputError(f"{path}: damaged gzip file (unreadable after line {lineno}); re-create it") from None


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, optionally gzipped; a byte-order mark is accepted."""
    for lineno, raw in enumerate(_binary_lines(path), 1):
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if b"\x00" in raw:
            raise InputError(f"{path}:{lineno}: NUL bytes (UTF-16 or a binary file?); save it as UTF-8 text")
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(
                f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}; Latin-1 or "
                "Windows-1252?); save the file as UTF-8"
            ) from None


def find_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        path = folder / name
        if path.exists() or path.is_symlink():
            check_file(path)  # a loop or dangling link is named as such, not as "missing"
            return path
    raise InputError(f"{folder}: no {stem}.jsonl or {stem}.jsonl.gz (BEIR layout expected)")


def _iter_csv(path: Path, id_field: str) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    # strict: a stray or unclosed quote is an error, not a field that swallows the following rows
    reader = csv.DictReader((text for _, text in iter_lines(path)), strict=True)
    row_start = 1
    try:
        if reader.fieldnames is None or id_field not in reader.fieldnames:
            raise InputError(f"{path}:1: CSV header must name an {id_field!r} column")
        row_start = reader.line_num + 1
        for row in reader:
            yield reader.line_num, row
            row_start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            msg = "unclosed quote (the quoted field opened here runs to the end of the file)"
            raise InputError(f"{path}:{row_start}: {msg}") from None
        if "field larger than field limit" in str(e):
            raise InputError(
                f"{path}:{row_start}: CSV field longer than {CSV_FIELD_LIMIT} characters (an unclosed quote?)"
            ) from None
        raise InputError(f"{path}:{row_start}: malformed CSV ({e})") from None


def iter_records(path: Path, id_field: str = "_id") -> Iterator[tuple[int, dict]]:
    """(line number, record) from JSONL (optionally gzipped) or CSV with a header."""
    if path.name.removesuffix(".gz").endswith(".csv"):
        yield from _iter_csv(path, id_field)
        return
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.rstrip("\r\n"))  # columns as an editor counts them
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_qrels(path: Path, counts: dict[str, int] | None = None) -> Qrels:
    """TREC-style TSV: query-id, corpus-id, score (optional header line); 4-column TREC qrels too.

    Odd but usable judgements are kept and counted in ``counts``: a negative grade (TREC's "junk") is
    read as 0, and a pair judged twice with different grades keeps the highest.
    """
    check_file(path)
    qrels: Qrels = {}
    negative = conflicting = 0
    first: dict[str, int] = {}  # warning class -> first line, so the user can find it
    for lineno, line in iter_lines(path):
        cols = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
        if not line.strip():
            continue
        if lineno == 1 and not _is_number(cols[-1]):
            continue  # header: only a non-numeric score column marks one, so a first data row is kept
        if len(cols) == 4:  # TREC: qid 0 docid rel
            cols = [cols[0], cols[2], cols[3]]
        if len(cols) != 3:
            raise InputError(f"{path}:{lineno}: expected 3 tab-separated columns query-id, corpus-id, score")
        try:
            grade = int(cols[2])
        except ValueError:
            # a numeric value is echoed; anything else could be record text (a corpus file given as qrels)
            got = repr(cols[2]) if _is_number(cols[2]) else "text"
            raise InputError(f"{path}:{lineno}: score must be an integer, got {got}") from None
        if grade > MAX_GRADE:
            raise InputError(f"{path}:{lineno}: score {grade} is out of range (relevance grades go up to {MAX_GRADE})")
        if grade < 0:
            negative += 1
            first.setdefault("negative", lineno)
            grade = 0
        judged = qrels.setdefault(cols[0], {})
        if cols[1] in judged and judged[cols[1]] != grade:
            conflicting += 1
            first.setdefault("conflicting", lineno)
            grade = max(grade, judged[cols[1]])
        judged[cols[1]] = grade
    if negative:
        log.warning("%s: %d negative grades read as 0 (first on line %d)", path, negative, first["negative"])
    if conflicting:
        log.warning(
            "%s: %d pairs judged again with a different grade; the highest is kept (first on line %d)",
            path,
            conflicting,
            first["conflicting"],
        )
    if counts is not None:
        counts["negative_grades"] = negative
        counts["conflicting_judgements"] = conflicting
    return qrels


def _lookup(rec: dict, dotted: str) -> tuple[bool, object]:
    """(found, value) of a dotted path such as ``metadata.qtype``; a CSV column of that exact name counts too."""
    if dotted in rec:
        return True, rec[dotted]
    node: object = rec
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def read_categories(path: Path, dotted: str, option: str, id_field: str = "_id") -> dict[str, str]:
    """``{id: value}`` of the field ``dotted`` (a string or number) for each record that carries it.

    A field carried by no record is an error naming ``option``, the file and the first record's line (a
    misspelt path); records lacking it when others carry it are left out of the categories and warned about."""
    values: dict[str, str] = {}
    missing, first_missing = 0, 0
    for lineno, rec in iter_records(path, id_field):
        found, value = _lookup(rec, dotted)
        if not found or value is None or value == "":
            missing += 1
            first_missing = first_missing or lineno
            continue
        if isinstance(value, (dict, list)):
            kind = "an object" if isinstance(value, dict) else "a list"
            raise InputError(f"{option}={dotted!r}: {path}:{lineno}: the field is {kind}; expected a string or number")
        values[str(rec.get(id_field))] = str(value)
    if not values:
        where = f"{path}:{first_missing}" if first_missing else str(path)
        raise InputError(f"{option}={dotted!r}: {where}: no such field (no query in the file carries it)")
    if missing:
        log.warning(
            "%s=%r: %d queries in %s lack the field (first on line %d); they are in no category slice",
            option,
            dotted,
            missing,
            path,
            first_missing,
        )
    return values
