"""`retina-shards build --out s3://bucket/prefix`: the local build, staged in a temporary folder and uploaded.

The objects are the bytes of a local build of the same inputs, under the same names (only index.json's
`build_config.out` says where the set went). Order of writes, so that nothing is visible half-way:

  1. refuse a prefix holding anything but a shard set of ours (as shards.out_folder does for a folder),
     then put `.build/claim.json`;
  2. plan exactly as the local build does (hashing in the staging folder), delete stale shards and markers;
  3. for each shard not already done: write the tar in the staging folder, upload it, upload its marker
     `.build/<shard>.json`, delete the local copy. An object appears only once its upload completes, and a
     marker only after its shard, so a marker names a complete shard;
  4. upload rejects.jsonl, duplicates.jsonl and, last, index.json.

Resume (a rerun after a crash or kill -9): a shard is done when its remote marker has the same plan digest and
the object under its name has the marker's byte size; it is not downloaded again (`retina-shards verify URL`
re-hashes every shard). Image hashes are not cached across runs (the cache holds local paths).
"""

from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from shards import index as shard_index
from shards.build import SHARD_NAME, BuildConfig, finish_build, plan_build, run_shards
from shards.images import ImageOptions
from shards.out_folder import CLAIM_NAME, ForeignFolderError, claim_out_folder
from shards.storage import join, list_names, read_bytes, remove, size, upload

__all__ = ["build_remote", "claim_prefix"]

log = logging.getLogger(__name__)

SHOWN = 5  # entries named in the error


def _ours(out: str, names: list[str]) -> bool:
    """The prefix holds one of our shard sets: our index.json, or the claim of an unfinished build."""
    if f".build/{CLAIM_NAME}" in names:
        return True
    if "index.json" not in names:
        return False
    try:
        return json.loads(read_bytes(join(out, "index.json"))).get("format") == shard_index.INDEX_FORMAT
    except (ValueError, AttributeError):  # not JSON, not an object
        return False


def claim_prefix(out: str) -> list[str]:
    """Refuse a prefix that is not empty and not ours (ForeignFolderError, nothing changed); return its names."""
    names = list_names(out)  # a missing bucket or missing credentials fail here, before any image work
    if names and not _ours(out, names):
        shown = ", ".join(names[:SHOWN]) + (f", ... ({len(names)} objects)" if len(names) > SHOWN else "")
        raise ForeignFolderError(f"--out {out} is not empty and is not a shard set of retina-shards build (it "
                                 f"holds {shown}); nothing was changed: give a new or empty prefix")
    return names


class RemoteShards:
    """The shards of one remote set: which are done, and publishing a finished one."""

    def __init__(self, out: str, staging: Path, names: list[str]):
        self.out, self.staging, self.names = out, staging, set(names)  # names: what the prefix held at the start

    def reusable(self, name: str, digest: str) -> dict | None:
        if f".build/{name}.json" not in self.names or name not in self.names:
            return None  # one listing answers for every shard never finished, instead of a request each
        try:
            marker = json.loads(read_bytes(join(self.out, f".build/{name}.json")))
            done = marker.get("digest") == digest and size(join(self.out, name)) == marker.get("bytes")
        except (FileNotFoundError, ValueError, AttributeError):  # no marker or shard yet, or a garbled marker
            return None
        if not done:
            return None
        # the local build keeps every marker in .build/; the staging folder mirrors it
        shard_index.write_json_atomic(shard_index.marker_path(self.staging, name), marker)
        return marker

    def publish(self, marker: dict) -> None:
        name = marker["name"]
        upload(self.staging / name, join(self.out, name))
        upload(shard_index.marker_path(self.staging, name), join(self.out, f".build/{name}.json"))
        (self.staging / name).unlink()  # the staging folder holds a few shards at most

    def remove_stale(self, names: list[str], keep: set[str]) -> None:
        """Shards and markers of an earlier, different plan (as shards.build.remove_stale)."""
        for name in names:
            shard = name.removeprefix(".build/").removesuffix(".json")  # a shard, or the shard of a marker
            if SHARD_NAME.match(shard) and shard not in keep:
                remove(join(self.out, name))


def build_remote(cfg: BuildConfig) -> dict:
    """shards.build.build for a URL --out; returns the index it uploaded."""
    out = str(cfg.out).rstrip("/")
    names = claim_prefix(out)
    with tempfile.TemporaryDirectory(prefix="retina-shards-staging-") as tmp:
        staging = Path(tmp)
        claim_out_folder(staging)
        claim = shard_index.build_dir(staging) / CLAIM_NAME
        if f".build/{CLAIM_NAME}" not in names:
            upload(claim, join(out, f".build/{CLAIM_NAME}"))
        shards = RemoteShards(out, staging, names)
        pool = ProcessPoolExecutor(max_workers=cfg.workers) if cfg.workers > 1 else None
        try:
            plan = plan_build(replace(cfg, out=staging), pool)
            shards.remove_stale(names, {t.name for t in plan.tasks})
            options = ImageOptions(cfg.image_size, cfg.image_format, cfg.max_pixels)
            markers = run_shards(plan.tasks, staging, options, pool, cfg.workers, cfg.progress,
                                 reusable=shards.reusable, publish=shards.publish)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        index = finish_build(cfg, plan, markers, folder=staging)
        for name in ("rejects.jsonl", "duplicates.jsonl", "index.json"):  # index.json last: it declares the set
            upload(staging / name, join(out, name))
    log.info("uploaded the shard set to %s", out)
    return index

