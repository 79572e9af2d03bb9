"""`retina-cluster shards`: `retina-shards build` with the shards written by Ray tasks.

The driver runs the deterministic stages of shards.build (read sources, dedup, hash, plan), so the plan, and
with it every shard's name, content and digest, is exactly the local builder's. The plan's shard list is cut
into contiguous ranges, one Ray task per range; a task writes only its own shards (atomically, with their
markers, by shards.build.finish_shard), so tasks never touch the same file. The driver then writes
rejects.jsonl, duplicates.jsonl and index.json from the markers in plan order, as shards.build.build does:
the output is byte-identical to a local build, and an interrupted run resumes the same way (markers whose
digest and sha256 still match are reused). Tasks read image files and write shards by path, so on several
machines the sources and DIR must be on shared storage.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from cluster.ray_util import connect
from shards.build import (BuildConfig, ShardTask, finish_build, finish_shard, plan_build, prepare_samples,
                          remove_stale, reusable_marker)
from shards.images import ImageOptions
from shards.out_folder import claim_out_folder
from shards.storage import is_url

__all__ = ["build_range", "build_with_ray", "split_ranges"]

log = logging.getLogger(__name__)


def split_ranges(tasks: list[ShardTask], parts: int) -> list[list[ShardTask]]:
    """Contiguous ranges of shards with about equal sample counts (at most `parts`, none empty)."""
    parts = max(1, min(parts, len(tasks)))
    total = sum(len(t.samples) for t in tasks)
    ranges: list[list[ShardTask]] = [[] for _ in range(parts)]
    done = 0
    for task in tasks:
        # the range this shard's first sample falls in, by cumulative sample count
        ranges[min(parts - 1, done * parts // max(total, 1))].append(task)
        done += len(task.samples)
    return [r for r in ranges if r]


def build_range(tasks: list[ShardTask], out: str, options: ImageOptions) -> list[dict]:
    """One Ray task: write (or reuse) each shard of its range; returns their markers."""
    from pathlib import Path

    markers = []
    for task in tasks:
        marker = reusable_marker(Path(out), task.name, task.digest)
        markers.append(marker or finish_shard(task, Path(out), prepare_samples(task.samples, options)))
    return markers


def build_with_ray(cfg: BuildConfig, tasks: int | None = None, address: str | None = None) -> dict[str, Any]:
    """Run a build with the shard writing spread over Ray tasks; returns the index (as shards.build.build)."""
    cfg.validate()
    if is_url(cfg.out):  # Ray tasks write into the shared folder; uploading from each is not built yet
        raise ValueError(f"--out {cfg.out}: retina-cluster shards writes to a folder; build to object storage "
                         "with `retina-shards build --out URL`")
    claim_out_folder(cfg.out)  # a folder that is not one of our shard sets is refused, nothing deleted
    pool = ProcessPoolExecutor(max_workers=cfg.workers) if cfg.workers > 1 else None
    try:
        plan = plan_build(cfg, pool)  # hashing uses local processes, like the local builder
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    remove_stale(cfg.out, {t.name for t in plan.tasks})
    options = ImageOptions(cfg.image_size, cfg.image_format, cfg.max_pixels)

    ray = connect(address)
    remote = ray.remote(num_cpus=1)(build_range)
    parts = tasks or int(ray.cluster_resources().get("CPU", 1))
    refs = [remote.remote(r, str(cfg.out), options) for r in split_ranges(plan.tasks, parts)]
    by_name = {m["name"]: m for markers in ray.get(refs) for m in markers}
    shards = [by_name[t.name] for t in plan.tasks]
    log.info("built %d shards with %d Ray tasks", len(shards), len(refs))

    return finish_build(cfg, plan, shards)  # the local builder's tail: the same index.json and reject logs
