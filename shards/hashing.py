"""Stage 2 of `retina-shards build`: sha256 of every image file, cached so a resumed build reads each once.

    cache = HashCache(out / ".build" / "hashes.jsonl")
    hashes = hash_images(paths, cache, pool, progress=True)      # path -> (sha256, error)
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import Executor
from pathlib import Path

from tqdm import tqdm

from shards.tarshard import file_sha256

__all__ = ["HashCache", "hash_images"]


def _hash_files(paths: list[str]) -> list[tuple[str, int, int, str, str]]:
    """(path, size, mtime_ns, sha256, error) for each file; runs in pool workers."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            if not os.path.isfile(path):
                out.append((path, 0, 0, "", "not a regular file"))
            elif st.st_size == 0:
                out.append((path, 0, st.st_mtime_ns, "", "zero-byte image file"))
            else:
                out.append((path, st.st_size, st.st_mtime_ns, file_sha256(Path(path)), ""))
        except FileNotFoundError:
            out.append((path, 0, 0, "", "missing image file"))
        except OSError as exc:
            out.append((path, 0, 0, "", f"cannot read image file: {exc.strerror or exc}"))
    return out


class HashCache:
    """Append-only JSONL of file hashes keyed by (path, size, mtime); tolerant of a torn last line."""

    def __init__(self, path: Path):
        self.path = path
        self.known: dict[str, tuple[int, int, str]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    self.known[entry["path"]] = (entry["size"], entry["mtime_ns"], entry["sha256"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def lookup(self, path: str) -> str | None:
        entry = self.known.get(path)
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return entry[2] if (st.st_size, st.st_mtime_ns) == entry[:2] else None

    def add(self, results: list[tuple[str, int, int, str, str]]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            for path, size, mtime_ns, sha, error in results:
                if not error:
                    fh.write(json.dumps({"path": path, "size": size, "mtime_ns": mtime_ns, "sha256": sha}) + "\n")


def hash_images(paths: list[str], cache: HashCache, pool: Executor | None, progress: bool) -> dict[str, tuple[str, str]]:
    """path -> (sha256, error)."""
    result: dict[str, tuple[str, str]] = {}
    todo = []
    for path in paths:
        sha = cache.lookup(path)
        if sha:
            result[path] = (sha, "")
        else:
            todo.append(path)
    chunks = [todo[i:i + 64] for i in range(0, len(todo), 64)]
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc="hash images", unit="img",
               disable=not progress, file=sys.stderr)
    done = pool.map(_hash_files, chunks) if pool else map(_hash_files, chunks)
    for chunk_result in done:
        cache.add(chunk_result)
        for path, _, _, sha, error in chunk_result:
            result[path] = (sha, error)
        bar.update(len(chunk_result))
    bar.close()
    return result
