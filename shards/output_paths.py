"""Can a command write its output where it was told to? Asked before any work starts.

    check_output_dir(args.out, "--out")              # OutputPathError: "--out runs/x: exists and is a file ..."
    check_output_file(args.plot, "--plot")

Without this, an output path that is a file, sits under a file, or lies in a read-only folder fails at the
first mkdir or open: after a model build, an image pass or a DeepSpeed start, with a traceback. The check
looks at what exists and makes (then removes) one empty folder where the output would go, the one test that
root and read-only mounts answer truthfully; it names the flag and the path. URLs (`s3://...`) are left to
whatever writes them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["OutputPathError", "check_output_dir", "check_output_file"]


class OutputPathError(ValueError):
    """The output path cannot be written; the message names the flag, the path and why."""


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a folder on the way that cannot be searched
        return False


def _check_writable(folder: Path, path: Path, flag: str) -> None:
    """Make and remove an empty folder in `folder` (os.access answers yes to root for a mode 555 folder)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=folder))
    except OSError as err:
        where = "the folder" if folder == path else str(folder)
        raise OutputPathError(f"{flag} {path}: cannot write in {where} ({err.strerror or err})") from None


def _check_parent(path: Path, flag: str) -> None:
    """The nearest existing folder above `path` must be a folder this process can write into."""
    base = path.parent
    while not _exists(base) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutputPathError(f"{flag} {path}: {base} is a file, not a folder")
    _check_writable(base, path, flag)


def check_output_dir(path: str | Path, flag: str) -> None:
    """`path` is a writable folder, or one that can be made."""
    if "://" in str(path):
        return
    path = Path(path)
    if _exists(path):
        if not path.is_dir():
            raise OutputPathError(f"{flag} {path}: exists and is a file, not a folder")
        _check_writable(path, path, flag)
        return
    _check_parent(path, flag)


def check_output_file(path: str | Path, flag: str) -> None:
    """`path` is a writable file, or one that can be made (not a folder)."""
    if "://" in str(path):
        return
    path = Path(path)
    if _exists(path):
        if path.is_dir():
            raise OutputPathError(f"{flag} {path}: is a folder, not a file")
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"{flag} {path}: the file is not writable")
    _check_parent(path, flag)  # written beside it first, then renamed over it (shards.atomic)
