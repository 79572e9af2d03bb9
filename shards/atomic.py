"""Atomic writes: a reader (or a crash) sees the old file or folder or the new one, never a partial one.

    atomic_write(path, "text")                        # a file; str or bytes
    with atomic_open(path, "wb") as fh: ...          # a file written by a streaming writer (a tar shard)
    replace_folder(out, fill)                         # fill(tmp) writes a folder, which then replaces `out`

Every file is fsynced before the rename and its folder after it, so a power loss cannot leave the new name
pointing at data that never reached the disk. The one writer for shards, indexes, checkpoints' `latest`
and exported model folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "atomic_write", "fsync_folder", "replace_folder"]


def fsync_folder(folder: str | Path) -> None:
    """Make a rename or a new entry in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A handle on `path.partial`; on a clean exit it is flushed, fsynced and renamed over `path`, on an error
    removed (the old `path`, if any, stays)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a whole file atomically (see atomic_open)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)


def replace_folder(out: str | Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """fill(tmp) writes into a fresh temporary folder beside `out`, which then takes its place; on any error the
    temporary folder is removed and `out` is untouched. FileExistsError if `out` exists and not overwrite."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        _ordinary_permissions(tmp)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_folder(out.parent)
    return out


def _ordinary_permissions(folder: Path) -> None:
    """mkdtemp makes a 0700 folder and some writers 0600 files; give them the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
