"""FLAIR-style categorical dataframes and KeepFIT caption dataframes.

FLAIR layout: `,image,atributes,categories` (upstream spells `atributes`; `attributes` is accepted),
list columns written by pandas as Python literals, image paths relative to a data root.
Caption layout (KeepFIT's MM-Retinal CSV): `,image,caption`.
A folder may mix both layouts (the KeepFIT pretraining folder does): each file is read by its header.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from shards.readers.common import Item, csv_files, dataset_name, rows_to_items
from shards.readers.fields import RowError, parse_list
from shards.readers.table import SourceError, Table, pick_column, read_csv
from shards.records import modality_from_path

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "image_path", "path", "filename")
CATEGORY_COLUMNS = ("categories",)
ATTRIBUTE_COLUMNS = ("atributes", "attributes")
CAPTION_COLUMNS = ("caption", "caption_en", "en_caption", "text")
CAPTION_ZH_COLUMNS = ("caption_zh", "zh_caption")


def layout_of(table: Table) -> str:
    lower = {c.lower() for c in table.columns}
    if "categories" in lower:
        return "flair"
    if lower & set(CAPTION_COLUMNS):
        return "captions"
    return "unknown"


def categorical_items(table: Table, source: str, image_root: Path) -> Iterator[Item]:
    image_col = pick_column(table, IMAGE_COLUMNS, role="the image path")
    cat_col = pick_column(table, CATEGORY_COLUMNS, role="the categories")
    attr_col = pick_column(table, ATTRIBUTE_COLUMNS, role="the attributes", required=False)
    dataset = dataset_name(table.path)

    def build(row: dict) -> dict:
        categories = parse_list(row.get(cat_col), column=cat_col)
        attributes = parse_list(row.get(attr_col), column=attr_col) if attr_col else ()
        return dict(dataset=dataset, modality=modality_from_path(str(row.get(image_col, ""))),
                    categories=categories, attributes=attributes)

    yield from rows_to_items(source, table.rows, build, image_root, image_col)


def caption_items(table: Table, source: str, image_root: Path, *, dataset: str | None = None) -> Iterator[Item]:
    image_col = pick_column(table, IMAGE_COLUMNS, role="the image path")
    cap_col = pick_column(table, CAPTION_COLUMNS, role="the caption")
    zh_col = pick_column(table, CAPTION_ZH_COLUMNS, role="the Chinese caption", required=False)
    name = dataset or dataset_name(table.path)

    def build(row: dict) -> dict:
        caption = str(row.get(cap_col) or "").strip()
        if not caption:
            raise RowError(f"empty caption in column '{cap_col}'")
        return dict(dataset=name, modality=modality_from_path(str(row.get(image_col, ""))),
                    caption=caption, caption_zh=str(row.get(zh_col) or "").strip() if zh_col else "")

    yield from rows_to_items(source, table.rows, build, image_root, image_col)


def read_dataframes(path: Path, image_root: Path | None, *, expect: str) -> Iterator[Item]:
    """Read a dataframe file or a folder of them. `expect` is the layout the user asked for."""
    files = csv_files(path)
    if not files:
        raise SourceError(f"{path}: no CSV files found")
    tables = [read_csv(f) for f in files]  # every file-level error surfaces before any row is used
    for table in tables:
        layout = layout_of(table)
        if layout == "unknown":
            raise SourceError(f"{table.path}: not a FLAIR dataframe (needs a 'categories' column) nor a caption "
                              f"table (needs a 'caption' column); found {list(table.columns)}")
        if layout != expect and not path.is_dir():
            raise SourceError(f"{table.path}: this is a {layout} table, not {expect}; "
                              f"name it as '{layout}:{table.path}'")
        if layout != expect:
            log.info("%s: %s layout inside a %s folder; reading it as %s", table.path, layout, expect, layout)
        root = image_root if image_root is not None else table.path.parent
        reader = categorical_items if layout == "flair" else caption_items
        yield from reader(table, str(table.path), root)
