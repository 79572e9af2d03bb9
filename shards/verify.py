"""`retina-shards verify DIR`: re-hash every shard, decode every sample, reconcile counts with the index."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from shards.build import SHARD_NAME
from shards.index import load_index
from shards.tarshard import ShardReadError, file_sha256, read_shard

IMAGE_EXTENSIONS = ("jpg", "png")


def check_sample(shard: str, sample: dict) -> list[str]:
    key = sample["__key__"]
    problems = []
    images = [ext for ext in IMAGE_EXTENSIONS if ext in sample]
    if len(images) != 1:
        problems.append(f"{shard}: sample {key}: expected one image, found {images or 'none'}")
    for ext in images:
        try:
            with Image.open(io.BytesIO(sample[ext])) as img:
                img.load()
        except Exception as exc:  # any decoder failure is a finding, not a crash
            problems.append(f"{shard}: sample {key}: image does not decode: {exc}")
    if "txt" not in sample:
        problems.append(f"{shard}: sample {key}: no txt member")
    try:
        meta = json.loads(sample.get("json", b""))
        if meta.get("key") != key:
            problems.append(f"{shard}: sample {key}: json key {meta.get('key')!r} does not match")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{shard}: sample {key}: json does not parse: {exc}")
    return problems


def verify(out: Path, progress: bool = True) -> list[str]:
    """Every problem found, as a line of text; an empty list means the shard set is sound."""
    try:
        index = load_index(out)
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    problems: list[str] = []
    listed = {s["name"] for s in index["shards"]}
    for path in sorted(out.glob("*.tar")):
        if SHARD_NAME.match(path.name) and path.name not in listed:
            problems.append(f"{path.name}: shard on disk but not in index.json")
    counted = 0
    for entry in tqdm(index["shards"], desc="verify", unit="shard", disable=not progress, file=sys.stderr):
        path = out / entry["name"]
        if not path.exists():
            problems.append(f"{entry['name']}: listed in index.json but missing")
            continue
        if path.stat().st_size != entry["bytes"]:
            problems.append(f"{entry['name']}: {path.stat().st_size} bytes, index says {entry['bytes']}")
        if file_sha256(path) != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 does not match index.json")
        try:
            samples = read_shard(path)
        except (ShardReadError, OSError) as exc:  # a torn or foreign tar
            problems.append(f"{entry['name']}: unreadable: {getattr(exc, 'problem', exc)}")
            continue
        if len(samples) != entry["samples"]:
            problems.append(f"{entry['name']}: {len(samples)} samples, index says {entry['samples']}")
        counted += len(samples)
        for sample in samples:
            problems.extend(check_sample(entry["name"], sample))
    totals = index["totals"]
    if counted != totals["written"]:
        problems.append(f"index totals say {totals['written']} samples written, shards hold {counted}")
    if totals["rows_read"] != totals["written"] + totals["rejected"] + totals["duplicates"]:
        problems.append(f"rows read {totals['rows_read']} != written {totals['written']} + rejected "
                        f"{totals['rejected']} + duplicates {totals['duplicates']}")
    for name, key in (("rejects.jsonl", "rejected"), ("duplicates.jsonl", "duplicates")):
        path = out / name
        lines = len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0
        if lines != totals[key]:
            problems.append(f"{name}: {lines} lines, index totals say {totals[key]}")
    return problems
