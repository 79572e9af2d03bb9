"""Deterministic tar writing: the same samples always give the same bytes.

webdataset's TarWriter stamps the current time into every member; resumable builds need shards
that are byte-identical across runs, so members here carry fixed metadata. The output is a plain
USTAR tar that `tar`, `webdataset.WebDataset` and any tar reader open.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from shards.atomic import atomic_open

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


def read_shard(path: Path) -> list[dict[str, bytes]]:
    """Group a shard's members into samples, refusing any member outside the whitelist."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                raise ValueError(f"{path}: member {member.name!r} is not a regular file")
            key, _, ext = member.name.rpartition(".")
            if ext not in ALLOWED_EXTENSIONS or not key or "/" in key:
                raise ValueError(f"{path}: unexpected member {member.name!r}")
            data = tar.extractfile(member).read()
            samples.setdefault(key, {"__key__": key})[ext] = data
    return list(samples.values())
