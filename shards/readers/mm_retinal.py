"""MM-Retinal: the release folder, and the FFA caption table in FLAIR layout.

Release folder layout (one folder per modality, caption tables beside or inside them):

    ROOT/CFP/<images>   ROOT/CFP.csv  (or any *.csv inside ROOT/CFP/)
    ROOT/FFA/<images>   ROOT/FFA.csv
    ROOT/OCT/<images>   ROOT/OCT.csv

Caption tables name the image (`Image`/`image`, a file name inside the modality folder or a path
starting with the folder), the English caption (`en_caption`/`caption`) and optionally the Chinese
one (`zh_caption`/`caption_zh`). MM-Retinal's FFA table in KeepFIT's release is FLAIR-shaped with
the caption as the only item of `categories`; it is read here as a caption source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from shards.readers.common import Item, rows_to_items
from shards.readers.dataframes import (CAPTION_COLUMNS, IMAGE_COLUMNS, caption_items, layout_of)
from shards.readers.fields import RowError, parse_list
from shards.readers.table import SourceError, Table, pick_column, read_csv
from shards.records import MODALITIES, modality_from_path

DATASET = "MM-Retinal"
RELEASE_IMAGE_COLUMNS = ("Image", "image", "img", "file", "filename", "image_path", "path")
RELEASE_CAPTION_COLUMNS = ("en_caption", "caption_en", "english_caption", "en") + CAPTION_COLUMNS


def _modality_folders(root: Path) -> dict[str, Path]:
    found = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.upper() in MODALITIES:
            found[child.name.upper()] = child
    return found


def _caption_tables(root: Path, modality: str, folder: Path) -> list[Path]:
    beside = [p for p in sorted(root.glob("*.csv")) if p.stem.upper().startswith(modality)]
    inside = sorted(folder.glob("*.csv"))
    return beside + inside


def release_items(root: Path) -> Iterator[Item]:
    folders = _modality_folders(root)
    if not folders:
        raise SourceError(f"{root}: no modality folders (expected some of {list(MODALITIES)})")
    plans: list[tuple[str, Path, Table]] = []
    for modality, folder in folders.items():
        tables = _caption_tables(root, modality, folder)
        if not tables:
            raise SourceError(f"{folder}: no caption table (expected {root / (modality + '.csv')} "
                              f"or a *.csv inside the folder)")
        plans.extend((modality, folder, read_csv(t)) for t in tables)
    for modality, folder, table in plans:
        image_col = pick_column(table, RELEASE_IMAGE_COLUMNS, role="the image file")
        cap_col = pick_column(table, RELEASE_CAPTION_COLUMNS, role="the English caption")
        zh_col = pick_column(table, ("zh_caption", "caption_zh", "chinese_caption", "zh"),
                             role="the Chinese caption", required=False)
        # Release tables usually name a file inside the modality folder; rebase such names onto it.
        rows = []
        for line, row in table.rows:
            name = str(row.get(image_col) or "").strip().replace("\\", "/")
            if name and "/" not in name:
                name = f"{folder.name}/{name}"
            rows.append((line, {**row, image_col: name}))

        def build(row: dict, modality=modality, cap_col=cap_col, zh_col=zh_col) -> dict:
            caption = str(row.get(cap_col) or "").strip()
            if not caption:
                raise RowError(f"empty caption in column '{cap_col}'")
            zh = str(row.get(zh_col) or "").strip() if zh_col else ""
            return dict(dataset=DATASET, modality=modality, caption=caption, caption_zh=zh)

        yield from rows_to_items(str(table.path), rows, build, root, image_col)


def ffa_table_items(table: Table, image_root: Path) -> Iterator[Item]:
    """KeepFIT's FFA.csv: FLAIR columns, caption = the text inside `categories`."""
    image_col = pick_column(table, IMAGE_COLUMNS, role="the image path")

    def build(row: dict) -> dict:
        texts = [t.strip() for t in parse_list(row.get("categories"), column="categories") if t.strip()]
        if not texts:
            raise RowError("empty caption (the 'categories' list holds no text)")
        return dict(dataset=DATASET, modality=modality_from_path(str(row.get(image_col, "")), "FFA"),
                    caption=" ".join(texts))

    yield from rows_to_items(str(table.path), table.rows, build, image_root, image_col)


def read_mm_retinal(path: Path, image_root: Path | None) -> Iterator[Item]:
    if path.is_dir():
        yield from release_items(path)
        return
    table = read_csv(path)
    root = image_root if image_root is not None else path.parent
    layout = layout_of(table)
    if layout == "flair":
        yield from ffa_table_items(table, root)
    elif layout == "captions":
        yield from caption_items(table, str(path), root, dataset=DATASET)
    else:
        raise SourceError(f"{path}: not an MM-Retinal caption table; found columns {list(table.columns)}")
