"""The two things a reader yields: a Record (one image-text/label sample) or a Reject (why a row was not)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

MODALITIES = ("CFP", "FFA", "OCT")


@dataclass(frozen=True)
class Record:
    """One sample as read from a source, before its image is touched."""

    source: str  # the file the row came from, as the user named it
    line: int  # line in that file where the row starts (1-based; the header is line 1 of a CSV)
    path: str  # image path exactly as the source wrote it
    image_file: Path  # that path resolved under the image root
    dataset: str
    modality: str = "CFP"
    caption: str = ""
    caption_zh: str = ""
    categories: tuple[str, ...] = ()  # raw category strings, as written
    attributes: tuple[str, ...] = ()
    split: str = ""  # '' lets the build's split rule decide

    @property
    def key(self) -> str:
        """Stable sample key: a hash of dataset and image path (no dots, so webdataset keeps it whole)."""
        return sample_key(self.dataset, self.path)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class Reject:
    """A row that produced no sample, with the reason in words."""

    source: str
    line: int
    path: str
    reason: str
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        out = {"source": self.source, "line": self.line, "path": self.path, "reason": self.reason}
        out.update(self.details)
        return out


def sample_key(dataset: str, path: str) -> str:
    return hashlib.sha1(f"{dataset}\0{path}".encode("utf-8")).hexdigest()[:24]


def modality_from_path(path: str, default: str = "CFP") -> str:
    """MM-Retinal style trees keep modality as a folder name."""
    parts = {p.upper() for p in path.replace("\\", "/").split("/")[:-1]}
    for modality in MODALITIES:
        if modality in parts:
            return modality
    return default
