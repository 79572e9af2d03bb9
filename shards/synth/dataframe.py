"""Stand-in pixels for an existing dataframe: every row's image is drawn to match its labels.

Lets someone with only the CSVs of a real dataset (FLAIR `,image,atributes,categories` or caption
`,image,caption`) run the pipeline end to end. Labels are matched loosely (see vocabulary.recognise);
rows it cannot place safely under the image root are skipped.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path, PurePosixPath, PureWindowsPath

from shards.records import modality_from_path
from shards.synth.recipe import make_recipe
from shards.synth.render import render, save_image, writable_format
from shards.synth.seeding import image_rng

TEXT_COLUMNS = ("categories", "caption")


def _cell_texts(cell: str) -> list[str]:
    """A list literal's items, or the cell itself when it is plain text."""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [cell]
    if isinstance(value, (list, tuple, set)):
        return [str(v) for v in value]
    return [str(value)]


def _target(root: Path, relative: str) -> Path | None:
    """Where a row's image goes, or None when the path is empty, absolute or leaves the root."""
    posix = relative.replace("\\", "/")
    if not posix or PurePosixPath(posix).is_absolute() or PureWindowsPath(relative).is_absolute():
        return None
    if PureWindowsPath(relative).drive or ".." in PurePosixPath(posix).parts:
        return None
    target = root / posix
    return target if target.resolve().is_relative_to(root.resolve()) else None


def _eye(texts: list[str]) -> str | None:
    joined = " ".join(texts).lower()
    if "left eye" in joined:
        return "left"
    return "right" if "right eye" in joined else None


def render_for_dataframe(csv_path: Path, image_root: Path, *, seed: int = 0, image_size: int = 256,
                         limit: int | None = None) -> int:
    """Draw an image for each row of `csv_path` at its path under `image_root`; return how many were written."""
    image_root = Path(image_root)
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    columns = {c.strip().lower(): c for c in reader.fieldnames or ()}
    if "image" not in columns or not any(c in columns for c in TEXT_COLUMNS):
        raise ValueError(f"{csv_path}: expected an 'image' column and one of {TEXT_COLUMNS}; "
                         f"found {list(columns.values())}")
    written = 0
    for row in rows:
        if limit is not None and written >= limit:
            break
        relative = (row.get(columns["image"]) or "").strip()
        target = _target(image_root, relative)
        if target is None or writable_format(target) is None:
            continue
        texts = [t for c in TEXT_COLUMNS if c in columns for t in _cell_texts(row.get(columns[c]) or "")]
        rng = image_rng(seed, "dataframe", relative)
        eye = _eye(texts) or str(rng.choice(("right", "left")))
        recipe = make_recipe(texts, rng)
        save_image(render(recipe, modality_from_path(relative), rng, image_size, eye), target)
        written += 1
    return written
