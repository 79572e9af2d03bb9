"""The shard set's own files: index.json, rejects.jsonl, duplicates.jsonl and the build markers.

index.json is the contract with readers: shard names with sample counts, byte sizes and sha256,
per-split totals, reject counts by reason, the build config, and the label vocabulary that the
samples' `labels` ids index into.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from shards.atomic import atomic_write
from shards.storage import is_url, join, read_bytes

INDEX_FORMAT = "retinascale-shards"
INDEX_VERSION = 1


def build_dir(out: Path) -> Path:
    return out / ".build"


def marker_path(out: Path, shard_name: str) -> Path:
    return build_dir(out) / f"{shard_name}.json"


def read_marker(out: Path, shard_name: str) -> dict | None:
    try:
        return json.loads(marker_path(out, shard_name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def reason_kind(reason: str) -> str:
    """The text before the first ':' names the kind of problem; the rest is detail."""
    return reason.split(":", 1)[0]


def make_index(build_config: dict, sources: list[dict], shards: list[dict], rows_read: int,
               rejects: list[dict], duplicates: list[dict], vocabulary: tuple[str, ...]) -> dict:
    splits: dict[str, dict] = {}
    for shard in shards:
        entry = splits.setdefault(shard["split"], {"shards": 0, "samples": 0, "bytes": 0})
        entry["shards"] += 1
        entry["samples"] += shard["samples"]
        entry["bytes"] += shard["bytes"]
    written = sum(s["samples"] for s in shards)
    return {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "shards": [{k: s[k] for k in ("name", "split", "samples", "bytes", "sha256")} for s in shards],
        "splits": splits,
        "totals": {"rows_read": rows_read, "written": written, "rejected": len(rejects),
                   "duplicates": len(duplicates), "bytes": sum(s["bytes"] for s in shards)},
        "rejects_by_reason": dict(Counter(reason_kind(r["reason"]) for r in rejects).most_common()),
        "sources": sources,
        "build_config": build_config,
        "label_vocabulary": list(vocabulary),
    }


def load_index(out: Path | str) -> dict:
    """The index.json of a shard set folder or URL (s3://bucket/prefix)."""
    path = join(out, "index.json")
    try:
        index = json.loads(read_bytes(path) if is_url(out) else Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no index.json (is {out} a shard set built by retina-shards build?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path}: not a {INDEX_FORMAT} index (format={index.get('format')!r})")
    return index


def shard_urls(out: Path | str, split: str | None = None) -> list[str]:
    """Paths (or URLs) of the shards of one split (or all), in index order, for webdataset."""
    index = load_index(out)
    return [str(join(out, s["name"])) for s in index["shards"] if split is None or s["split"] == split]
