"""The output folder of `retina-shards build` (and `retina-cluster shards`): only ever one of our shard sets.

    claim_out_folder(out)      # ForeignFolderError, deleting nothing, unless OUT may become a shard set

A build prunes stale shards (`<split>-NNNNNN.tar`) and replaces index.json, rejects.jsonl and duplicates.jsonl,
which in a folder filled by someone else would destroy their files. So OUT must be missing, empty, or ours:
it holds an index.json of format retinascale-shards (a finished build), or the `.build/` folder of a build that
has not written its index yet. A build writes the claim file `.build/claim.json` before anything else; a
`.build/` of an older build (no claim yet) is recognised by holding only the builder's own files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from shards.atomic import atomic_write
from shards.index import INDEX_FORMAT, build_dir

__all__ = ["CLAIM_NAME", "ForeignFolderError", "claim_out_folder", "is_shard_set"]

CLAIM_NAME = "claim.json"
_BUILDER_FILES = re.compile(r"^(hashes\.jsonl|.+\.tar\.json)(\.partial)?$")  # what .build/ held before claims
SHOWN = 5  # entries named in the error


class ForeignFolderError(ValueError):
    """OUT holds files that are not a shard set of ours; the message names the folder and some of its files."""


def _our_index(out: Path) -> bool:
    try:
        return json.loads((out / "index.json").read_text(encoding="utf-8")).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):  # missing, unreadable, not JSON, not an object
        return False


def _our_build_folder(out: Path) -> bool:
    folder = build_dir(out)
    if (folder / CLAIM_NAME).is_file():
        return True
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return bool(names) and all(_BUILDER_FILES.match(name) for name in names)


def is_shard_set(out: Path) -> bool:
    """OUT is a finished or interrupted build of ours."""
    return out.is_dir() and (_our_index(out) or _our_build_folder(out))


def _refuse(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ForeignFolderError(f"--out {out} exists and is not a folder")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not names or is_shard_set(out):
        return
    shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names)} entries)" if len(names) > SHOWN else "")
    raise ForeignFolderError(f"--out {out} is not empty and is not a shard set of retina-shards build (it holds "
                             f"{shown}); nothing was changed: give a new or empty folder")


def claim_out_folder(out: Path) -> None:
    """Check OUT (see the module doc), then create it and its `.build/` with the claim file."""
    _refuse(out)
    folder = build_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / CLAIM_NAME).is_file():
        atomic_write(folder / CLAIM_NAME, json.dumps({"format": INDEX_FORMAT}) + "\n")
