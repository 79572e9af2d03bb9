"""A generic manifest: CSV or JSONL, one image per row, with a caption and/or labels.

Columns (case-insensitive; first match wins):
  image      image | image_path | path | file | filename        (required)
  caption    caption | text | report                            (caption and/or labels required)
  labels     labels | categories                                (list literal, JSON list, or 'a|b' / 'a;b')
  optional   caption_zh, attributes, modality (CFP|FFA|OCT), dataset, split
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from shards.readers.common import Item, rows_to_items
from shards.readers.fields import RowError, parse_labels
from shards.readers.table import SourceError, pick_column, read_csv, read_jsonl
from shards.records import MODALITIES, Reject, modality_from_path

IMAGE = ("image", "image_path", "path", "file", "filename")
CAPTION = ("caption", "text", "report")
LABELS = ("labels", "categories")


def read_manifest(path: Path, image_root: Path | None) -> Iterator[Item]:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        table, bad_lines = read_jsonl(path)
    else:
        table, bad_lines = read_csv(path), []
    image_col = pick_column(table, IMAGE, role="the image path")
    cap_col = pick_column(table, CAPTION, role="the caption", required=False)
    lab_col = pick_column(table, LABELS, role="the labels", required=False)
    if cap_col is None and lab_col is None:
        raise SourceError(f"{path}: needs a caption column {list(CAPTION)} and/or a labels column "
                          f"{list(LABELS)}; found {list(table.columns)}")
    optional = {name: pick_column(table, (name,), role=name, required=False)
                for name in ("caption_zh", "attributes", "modality", "dataset", "split")}
    default_dataset = path.stem

    def cell(row: dict, column: str | None) -> str:
        return str(row.get(column) or "").strip() if column else ""

    def build(row: dict) -> dict:
        caption = cell(row, cap_col)
        labels = parse_labels(row.get(lab_col), column=lab_col) if lab_col else ()
        if not caption and not labels:
            raise RowError("neither a caption nor labels")
        modality = (cell(row, optional["modality"]) or modality_from_path(cell(row, image_col))).upper()
        if modality not in MODALITIES:
            raise RowError(f"unknown modality {modality!r} (expected one of {list(MODALITIES)})")
        attr_col = optional["attributes"]
        return dict(dataset=cell(row, optional["dataset"]) or default_dataset, modality=modality,
                    caption=caption, caption_zh=cell(row, optional["caption_zh"]), categories=labels,
                    attributes=parse_labels(row.get(attr_col), column=attr_col) if attr_col else (),
                    split=cell(row, optional["split"]))

    for line, problem in bad_lines:
        yield Reject(str(path), line, "", problem)
    root = image_root if image_root is not None else path.parent
    yield from rows_to_items(str(path), table.rows, build, root, image_col)
