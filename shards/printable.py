"""Short, escaped text of untrusted bytes and strings, for warnings, errors and reject reasons.

    printable(b"\\x00\\xffjunk" * 100)   # "b'\\x00\\xffjunk\\x00\\xffjunk...'... (600 bytes)"
    printable_text("a\\x1b[31mname")     # "a\\\\x1b[31mname": a name safe on one terminal line
    error_text(exc)                     # "UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff ..."

A corrupt shard or table holds anything: raw binary, terminal escape sequences, megabytes on one line. A
message that quotes it must stay one readable line, so what is quoted is a short prefix with every control
character and non-ASCII byte escaped (repr), followed by the full length when it was cut. `repr(exc)` is no
good for this: a UnicodeDecodeError's repr holds the whole undecodable object.
"""

from __future__ import annotations

__all__ = ["PREFIX", "error_text", "printable", "printable_text"]

PREFIX = 40
"""Bytes or characters quoted before the rest is cut."""


def printable(data: bytes | str, limit: int = PREFIX) -> str:
    """The repr of the first `limit` bytes (or characters), plus the full length when it was cut."""
    if len(data) <= limit:
        return repr(data)
    unit = "bytes" if isinstance(data, (bytes, bytearray)) else "characters"
    return f"{data[:limit]!r}... ({len(data)} {unit})"


def printable_text(value: str, limit: int = 200) -> str:
    """A name or message safe to print on one line: control characters escaped, long text cut."""
    escaped = value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value
    return escaped if len(escaped) <= limit else escaped[:limit] + f"... ({len(value)} characters)"


def error_text(exc: BaseException, limit: int = 200) -> str:
    """`Type: message` on one line, escaped and cut (never the raw bytes an exception may carry)."""
    return f"{type(exc).__name__}: {printable_text(str(exc), limit)}"
