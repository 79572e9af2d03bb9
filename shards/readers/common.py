"""What every reader shares: turning one table row into a Record or a Reject."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from shards.readers.fields import RowError, resolve_image
from shards.records import Record, Reject

Item = Record | Reject


def rows_to_items(source: str, rows: list[tuple[int, dict]], build: Callable[[dict], dict],
                  image_root: Path, path_column: str) -> Iterator[Item]:
    """Apply `build` (row -> Record fields) to every row; row-level problems become Rejects."""
    for line, row in rows:
        raw_path = str(row.get(path_column) or "")
        try:
            fields = build(row)
            image_file = resolve_image(image_root, raw_path)
            yield Record(source=source, line=line, path=raw_path.strip(), image_file=image_file, **fields)
        except RowError as exc:
            yield Reject(source, line, raw_path, str(exc))


def dataset_name(csv_path: Path) -> str:
    return csv_path.stem


def csv_files(path: Path) -> list[Path]:
    """A CSV file, or the CSV files directly inside a folder, in a stable order."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    return [path]
