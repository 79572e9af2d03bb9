"""Deterministic tar writing: the same samples always give the same bytes.

webdataset's TarWriter stamps the current time into every member; resumable builds need shards
that are byte-identical across runs, so members here carry fixed metadata. The output is a plain
USTAR tar that `tar`, `webdataset.WebDataset` and any tar reader open.

Reading back (verify, inspect, stats) groups members into samples and says exactly how a damaged shard is
damaged (truncated, garbled, foreign member), keeping the complete samples read before the damage.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from shards.atomic import atomic_open
from shards.printable import printable

ALLOWED_EXTENSIONS = ("jpg", "png", "txt", "json")


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> tuple[int, str]:
    """Write samples ({'__key__': key, ext: bytes}) atomically; return (size in bytes, sha256)."""
    with atomic_open(path, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                key = sample["__key__"]
                for ext in ALLOWED_EXTENSIONS:
                    if ext in sample:
                        tar.addfile(*_member(f"{key}.{ext}", sample[ext]))
    return path.stat().st_size, file_sha256(path)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ShardReadError(ValueError):
    """A shard that is not a sound tar to its end; `samples` holds the complete samples read before the damage."""

    def __init__(self, path: Path, problem: str, samples: list[dict[str, bytes]]):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem, self.samples = path, problem, samples


def read_shard(path: Path) -> list[dict[str, bytes]]:
    """Group a shard's members into samples, refusing any member outside the whitelist.

    A tar cut short or overwritten with garbage raises ShardReadError. tarfile alone would not always say so:
    past the first member it takes a short or invalid header for the end of the archive and stops quietly, so
    what follows the last member is checked too (a tar ends with zero blocks and nothing else)."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.rpartition(".")
                if not member.isfile() or ext not in ALLOWED_EXTENSIONS or not key or "/" in key:
                    what = "is not a regular file" if not member.isfile() else "is not a KEY.jpg|png|txt|json file"
                    raise ShardReadError(path, f"member {printable(member.name)} {what}",
                                         list(samples.values()))
                data = tar.extractfile(member).read()
                samples.setdefault(key, {"__key__": key})[ext] = data
            end = tar.offset
    except tarfile.TarError as exc:  # a sample being read when the data ran out is not complete: leave it out
        complete = list(samples.values())[:-1]
        problem = (f"truncated tar: the data ends at byte {path.stat().st_size}, inside a member"
                   if "unexpected end of data" in str(exc) else f"not a readable tar ({exc})")
        raise ShardReadError(path, f"{problem}; {len(complete)} complete sample(s) before it", complete) from None
    if problem := _tail_problem(path, end):
        complete = list(samples.values())[:-1]
        raise ShardReadError(path, f"{problem}; {len(complete)} complete sample(s) before it", complete)
    return list(samples.values())


def _tail_problem(path: Path, end: int) -> str | None:
    """What is wrong with the bytes after the last member, if anything (a tar ends with >= 2 zero blocks)."""
    size = path.stat().st_size
    if size - end < 2 * tarfile.BLOCKSIZE:
        return f"truncated tar: it ends at byte {size}, inside a header or before the end-of-archive marker"
    with open(path, "rb") as fh:
        fh.seek(end)
        at = end
        while chunk := fh.read(1 << 16):
            rest = chunk.lstrip(b"\0")
            if rest:
                return f"garbled tar: no valid header at byte {at + len(chunk) - len(rest)} (starts {printable(rest)})"
            at += len(chunk)
    return None
