"""Parsing of cell values shared by every reader: list literals and image paths."""

from __future__ import annotations

import ast
import json
import posixpath
from pathlib import Path


class RowError(ValueError):
    """A row-level problem; becomes a Reject with this message as the reason."""


def parse_list(cell: object, *, column: str) -> tuple[str, ...]:
    """A list column: a Python list literal as pandas writes it ("['a', 'b']"), a JSON list, or blank.

    Parsed with ast.literal_eval, which evaluates literals only (never code).
    """
    if cell is None:
        return ()
    if isinstance(cell, list):
        values = cell
    else:
        text = str(cell).strip()
        if text in ("", "nan", "NaN", "None"):
            return ()
        if not text.startswith(("[", "(")):
            raise RowError(f"column '{column}' is not a list literal: {text[:80]!r}")
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise RowError(f"column '{column}' is not a valid list literal: {text[:80]!r}") from None
        if not isinstance(values, (list, tuple)):
            raise RowError(f"column '{column}' is not a list: {text[:80]!r}")
    out = []
    for value in values:
        if not isinstance(value, (str, int, float)):
            raise RowError(f"column '{column}' holds a non-text item {value!r}")
        out.append(str(value))
    return tuple(out)


def parse_labels(cell: object, *, column: str) -> tuple[str, ...]:
    """Manifest label cells: a list literal, a JSON list, or 'a|b' / 'a;b' separated text."""
    if isinstance(cell, str) and cell.strip() and not cell.strip().startswith(("[", "(")):
        sep = "|" if "|" in cell else ";"
        return tuple(part.strip() for part in cell.split(sep) if part.strip())
    if isinstance(cell, str) and cell.strip().startswith("["):
        try:
            values = json.loads(cell)
            if isinstance(values, list):
                return parse_list(values, column=column)
        except json.JSONDecodeError:
            pass
    return parse_list(cell, column=column)


def resolve_image(root: Path, raw: str) -> Path:
    """Resolve a relative image path under `root`, refusing absolute paths and paths escaping the root.

    First lexically (`..`), then with symlinks followed: a link inside the root (to a file, or a folder the
    path goes through) whose target lies outside the resolved root is refused with its own reason, so a row
    can never read a file outside the root. Links that stay inside the root are fine, and so is a data root
    that is itself a symlink to another disk (the root is resolved too). Returns the lexical path.
    """
    path = raw.strip().replace("\\", "/")
    if not path:
        raise RowError("empty image path")
    if "\0" in path:  # no file system allows it; open() would fail the whole build with "embedded null byte"
        raise RowError(f"image path holds a NUL byte: {raw[:80]!r}")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise RowError(f"absolute image path not allowed (must be relative to the image root): {raw!r}")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise RowError(f"image path escapes the image root: {raw!r}")
    image = root / normal
    try:
        real_root, target = root.resolve(), image.resolve()  # a missing file resolves as far as it exists
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise RowError(f"cannot resolve image path: {raw!r} ({exc})") from None
    if target != real_root and real_root not in target.parents:
        raise RowError(f"symlink escapes the image root: {raw!r} -> {target}")
    return image
