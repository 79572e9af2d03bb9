"""CSV writers for the three table layouts, byte-compatible with what pandas writes for the real files."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence


def _write(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # pandas' defaults: minimal quoting, '\n'
        writer.writerow(header)
        writer.writerows(rows)


def write_flair(path: Path, rows: Iterable[tuple[str, Sequence[str], Sequence[str]]]) -> None:
    """FLAIR layout `,image,atributes,categories`; list cells are Python literals, as `str(list)` gives."""
    _write(path, ("", "image", "atributes", "categories"),
           ((str(i), image, str(list(attributes)), str(list(categories)))
            for i, (image, attributes, categories) in enumerate(rows)))


def write_captions(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """KeepFIT caption layout `,image,caption`."""
    _write(path, ("", "image", "caption"), ((str(i), image, caption) for i, (image, caption) in enumerate(rows)))


def write_release(path: Path, rows: Iterable[tuple[str, str, str]]) -> None:
    """MM-Retinal release table `Image,en_caption,zh_caption` (file names inside the modality folder)."""
    _write(path, ("Image", "en_caption", "zh_caption"), rows)
