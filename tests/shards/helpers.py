"""Small builders of real files for shard tests: images in every awkward mode and tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image


def fundus_like(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small RGB image whose pixels depend on the seed (so every file has distinct content)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def jpeg_bytes(seed: int, size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    fundus_like(seed, size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png16(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 65535, size=(size[1], size[0]), dtype=np.uint16))


def write_flair_csv(path: Path, rows: list[tuple[str, str, str]], encoding: str = "utf-8") -> Path:
    """rows: (image, atributes literal, categories literal), written the way pandas writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh)
        writer.writerow(["", "image", "atributes", "categories"])
        for number, row in enumerate(rows):
            writer.writerow([number, *row])
    return path


def write_caption_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["", "image", "caption"])
        for number, row in enumerate(rows):
            writer.writerow([number, *row])
    return path


def count_csv_rows(path: Path) -> int:
    """Independent count of data rows (csv module, header excluded)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        return sum(1 for row in csv.reader(fh) if row) - 1
