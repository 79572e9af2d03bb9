"""Readers of real dataset layouts. Each turns a source into Records and Rejects without touching pixels.

A source is named `KIND:PATH[:IMAGE_ROOT]` on the command line:

  flair       FLAIR-style dataframe(s) `,image,atributes,categories` (a file or a folder of them)
  captions    caption table(s) `,image,caption` (KeepFIT's MM-Retinal CSV and the like)
  mm-retinal  an MM-Retinal release folder (CFP/FFA/OCT + caption tables) or its FFA.csv
  manifest    a generic CSV/JSONL manifest (image + caption and/or labels)

IMAGE_ROOT defaults to the folder holding the table (the release folder for mm-retinal).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from shards.readers.common import Item
from shards.readers.dataframes import read_dataframes
from shards.readers.manifest import read_manifest
from shards.readers.mm_retinal import read_mm_retinal
from shards.readers.table import SourceError

READERS: dict[str, Callable[[Path, Path | None], Iterator[Item]]] = {
    "flair": partial(read_dataframes, expect="flair"),
    "captions": partial(read_dataframes, expect="captions"),
    "mm-retinal": read_mm_retinal,
    "manifest": read_manifest,
}


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    path: Path
    image_root: Path | None = None

    @classmethod
    def parse(cls, text: str) -> "SourceSpec":
        kind, sep, rest = text.partition(":")
        if not sep or kind not in READERS:
            raise SourceError(f"source {text!r}: expected KIND:PATH[:IMAGE_ROOT] with KIND one of {sorted(READERS)}")
        path, _, root = rest.partition(":")
        if not path:
            raise SourceError(f"source {text!r}: missing PATH")
        spec = cls(kind, Path(path), Path(root) if root else None)
        if not spec.path.exists():
            raise SourceError(f"source {text!r}: {spec.path} does not exist")
        if spec.image_root is not None and not spec.image_root.is_dir():
            raise SourceError(f"source {text!r}: image root {spec.image_root} is not a folder")
        return spec

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}" + (f":{self.image_root}" if self.image_root else "")


def read_source(spec: SourceSpec) -> list[Item]:
    """Every item of a source, in file and row order. File-level problems raise SourceError, and so does a
    source without a single row (a header-only CSV would otherwise build an empty shard set, exit 0)."""
    items = list(READERS[spec.kind](spec.path, spec.image_root))
    if not items:
        raise SourceError(f"{spec.path}: no rows (source {spec}: a header and nothing else?)")
    return items


__all__ = ["READERS", "SourceSpec", "SourceError", "read_source"]
