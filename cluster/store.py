"""The zarr v3 embedding store: image and text embeddings of one shard split, with keys and metadata.

    STORE/zarr.json        group attrs: format, version, count, chunk, embed_dim, fingerprint, source (shard
                           set, split, shard names and sha256), model (run, checkpoint), label_vocabulary,
                           complete (true once every chunk is written)
    image_embeds  float32 (N, D)   unit-norm, from RetinaCLIP.get_image_features
    text_embeds   float32 (N, D)   unit-norm, from RetinaCLIP.get_text_features
    keys          str (N,)         the shard sample keys (__key__)
    text          str (N,)         the text that was embedded (the caption, or for a categorical sample a
                                   prompt sampled with a seed derived from its key)
    dataset       str (N,)
    multi_hot     uint8 (N, L)     labels over label_vocabulary (for linear probes)
    valid         bool (N,)        false where the sample could not be decoded (its embeddings are zeros)
    done          uint8 (n_chunks,) 1 once a chunk of every array above is written (chunk size 1)

Rows are the split's samples in shard order (index.json order, then tar order), so row i is the same sample
whoever wrote it. Every array is chunked along samples with the same `chunk`, and a writer owns whole chunks,
so concurrent writers never share a file. A rerun skips chunks whose `done` is set; a chunk interrupted midway
has no `done` and is written again from scratch. A store is only ever created in a missing or empty folder or
over a store of ours: any other folder is refused untouched.

    store = open_store("emb.zarr"); store["image_embeds"][:]; read_embeddings("emb.zarr") -> dict of arrays
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "ARRAYS", "create_store", "open_store", "pending_chunks", "read_embeddings", "write_chunk"]

FORMAT = "retinascale-embeddings"
VERSION = 1
ARRAYS = ("image_embeds", "text_embeds", "keys", "text", "dataset", "multi_hot", "valid")


def create_store(path: str | Path, *, count: int, chunk: int, embed_dim: int, num_labels: int,
                 attrs: dict[str, Any]) -> Any:
    """Create (or keep, when its fingerprint matches) the store; returns the open zarr group."""
    import zarr

    existing = _open_if(path)
    if existing is not None and existing.attrs.get("fingerprint") == attrs["fingerprint"]:
        return zarr.open_group(str(path), mode="r+")
    _refuse_foreign(Path(path))  # mode "w" deletes the whole folder first
    # A new or different store of ours: start over. The format attribute goes in with the group itself, so a
    # creation cut short is still recognised as ours by the rerun.
    group = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"format": FORMAT, "complete": False})
    c = max(1, min(chunk, count))
    for name, shape, dtype, fill in (("image_embeds", (count, embed_dim), "float32", 0.0),
                                     ("text_embeds", (count, embed_dim), "float32", 0.0),
                                     ("multi_hot", (count, num_labels), "uint8", 0),
                                     ("valid", (count,), "bool", False)):
        group.create_array(name, shape=shape, chunks=(c, *shape[1:]), dtype=dtype, fill_value=fill)
    for name in ("keys", "text", "dataset"):
        group.create_array(name, shape=(count,), chunks=(c,), dtype=str)
    group.create_array("done", shape=(n_chunks(count, c),), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs.update({"format": FORMAT, "version": VERSION, "count": count, "chunk": c, "embed_dim": embed_dim,
                        "complete": False, **attrs})
    return group


def _refuse_foreign(path: Path) -> None:
    """ValueError unless `path` is missing, an empty folder or a store of ours (by its zarr.json's format)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a folder")
    names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if not names:
        return
    try:
        ours = json.loads((path / "zarr.json").read_text(encoding="utf-8"))["attributes"]["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
        raise ValueError(f"--out {path} is not empty and is not an embedding store of retina-cluster embed (it "
                         f"holds {shown}); nothing was changed: give a new or empty folder")


def _open_if(path: str | Path) -> Any:
    import zarr

    if not (Path(path) / "zarr.json").is_file():
        return None
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception:  # an unreadable leftover is replaced
        return None


def open_store(path: str | Path, mode: str = "r") -> Any:
    import zarr

    group = zarr.open_group(str(path), mode=mode)
    if group.attrs.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} zarr store")
    return group


def n_chunks(count: int, chunk: int) -> int:
    return -(-count // chunk)


def pending_chunks(group: Any) -> list[int]:
    return [int(i) for i in np.flatnonzero(group["done"][:] == 0)]


def write_chunk(group: Any, number: int, rows: dict[str, np.ndarray]) -> None:
    """Write chunk `number` of every array, then mark it done (the mark is what a rerun trusts)."""
    start = number * int(group.attrs["chunk"])
    for name in ARRAYS:
        values = rows[name]
        group[name][start:start + len(values)] = values
    group["done"][number] = 1


def read_embeddings(path: str | Path) -> dict[str, Any]:
    """The whole store in memory: arrays by name plus `attrs`; refuses an incomplete store."""
    group = open_store(path)
    if not group.attrs.get("complete"):
        raise ValueError(f"{path}: the store is incomplete (rerun `retina-cluster embed` to finish it)")
    out: dict[str, Any] = {name: group[name][:] for name in ARRAYS}
    out["attrs"] = dict(group.attrs)
    return out
