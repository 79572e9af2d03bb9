"""Reading tabular sources (CSV and JSONL) with clear file-level errors and a decoding policy.

File-level problems (missing columns, an unreadable file) raise SourceError before any image work.
Row-level problems become Rejects further up. Text that is not UTF-8 is decoded as cp1252 (then
latin-1, which never fails) and the fallback is reported, so a Windows-exported CSV still builds.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FALLBACK_ENCODINGS = ("cp1252", "latin-1")


class SourceError(ValueError):
    """A whole source cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Table:
    path: Path
    encoding: str
    columns: tuple[str, ...]
    rows: list[tuple[int, dict[str, str]]]  # (line where the row starts, cells by column)


def decode_text(path: Path) -> tuple[str, str]:
    """Return (text, encoding used). UTF-8 (with or without BOM) first, then documented fallbacks."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        for encoding in FALLBACK_ENCODINGS:
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                continue
            log.warning("%s is not UTF-8 (byte 0x%02x at line %d); decoded as %s",
                        path, data[exc.start], line, encoding)
            return text, encoding
    raise AssertionError("latin-1 decodes every byte string")


def read_csv(path: Path) -> Table:
    text, encoding = decode_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SourceError(f"{path}: empty file (no header row)") from None
    except csv.Error as exc:
        raise SourceError(f"{path}: line 1: not a CSV header: {exc}") from exc
    columns = tuple(c.strip() for c in header)
    rows: list[tuple[int, dict[str, str]]] = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise SourceError(f"{path}: line {start}: malformed CSV: {exc}") from exc
        if cells:  # blank lines carry no row
            padded = cells + [""] * (len(columns) - len(cells))
            rows.append((start, dict(zip(columns, padded))))
        start = reader.line_num + 1
    return Table(path, encoding, columns, rows)


def read_jsonl(path: Path) -> tuple[Table, list[tuple[int, str]]]:
    """Rows of a JSON-lines file plus (line, problem) for lines that are not JSON objects."""
    text, encoding = decode_text(path)
    rows: list[tuple[int, dict[str, str]]] = []
    bad: list[tuple[int, str]] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((number, f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            bad.append((number, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        columns.update(dict.fromkeys(obj))
        rows.append((number, obj))
    return Table(path, encoding, tuple(columns), rows), bad


def pick_column(table: Table, aliases: tuple[str, ...], *, role: str, required: bool = True) -> str | None:
    """The first column matching one of `aliases` (case-insensitive), or a SourceError naming the file."""
    by_lower = {c.lower(): c for c in table.columns}
    for alias in aliases:
        if alias.lower() in by_lower:
            return by_lower[alias.lower()]
    if required:
        raise SourceError(
            f"{table.path}: missing column for {role}: expected one of {list(aliases)}, "
            f"found {list(table.columns)}")
    return None
