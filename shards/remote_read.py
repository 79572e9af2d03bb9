"""`retina-shards verify|inspect|stats s3://bucket/prefix`: read a remote shard set from a local copy.

The readers (shards.verify, shards.summary) work on a folder; a remote set is copied into a temporary one
first (index.json, the reject logs and every top-level object, so verify also sees a shard the index does
not list) and removed afterwards. verify reads every byte anyway; inspect pays for a whole copy to show a
few samples, the price of one reading path for both. Messages name the URL, never the temporary folder.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shards.storage import download, is_url, join, list_names

__all__ = ["LocalCopy", "local_copy"]


@dataclass(frozen=True)
class LocalCopy:
    folder: Path  # where the readers read
    shown: str  # how messages name it: the URL, or the folder itself

    def name(self, text: str) -> str:
        """A message about the copy, naming the original instead."""
        return text.replace(str(self.folder), self.shown)


@contextlib.contextmanager
def local_copy(where: str | Path) -> Iterator[LocalCopy]:
    """A local folder holding the shard set `where`: the folder itself, or a temporary copy of a URL."""
    if not is_url(where):
        yield LocalCopy(Path(where), str(where))
        return
    url = str(where).rstrip("/")
    names = [n for n in list_names(url) if "/" not in n]  # .build/ is the builder's, not the set's
    if "index.json" not in names:
        raise FileNotFoundError(f"{url}/index.json: no index.json (is {url} a shard set built by retina-shards "
                                f"build? the prefix holds {len(names)} top-level object(s))")
    with tempfile.TemporaryDirectory(prefix="retina-shards-copy-") as tmp:
        for name in names:
            download(str(join(url, name)), Path(tmp) / name)
        yield LocalCopy(Path(tmp), url)
