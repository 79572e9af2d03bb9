"""`retina-shards build`: sources -> verified, deterministic, resumable WebDataset shards.

Stages (each deterministic, so a rerun after a crash plans exactly the same shards):
  1. read every source (file-level errors stop here, before any image work);
  2. drop rows whose key repeats (same dataset and path) and hash every image file
     (cached in DIR/.build/hashes.jsonl so a resumed build does not read them twice);
  3. reject missing / empty files, drop content duplicates (first occurrence in source order wins);
  4. assign splits (the source's own split, else a rule on the key hash), order, cut into shards;
  5. build shards in a process pool; a shard is written atomically, then a marker
     DIR/.build/<shard>.json; a rerun skips shards whose marker, plan digest and sha256 agree;
  6. write rejects.jsonl, duplicates.jsonl and index.json.
An `s3://` (any fsspec URL) --out is shards.remote_build's: the same build in a local staging folder, uploaded as it goes
(`retina-shards build` picks it). DIR must be missing, empty or one of our shard sets (shards.out_folder); any other folder is refused untouched.
Always: rows read = written + rejected + duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from shards import index as shard_index
from shards.hashing import HashCache, hash_images
from shards.images import DEFAULT_MAX_PIXELS, FORMATS, ImageOptions, ImageRejected, prepare_image
from shards.knowledge import load_knowledge
from shards.metadata import SHARD_FORMAT_VERSION, base_metadata
from shards.out_folder import claim_out_folder
from shards.printable import printable_text
from shards.readers import SourceSpec, read_source
from shards.records import Record, Reject
from shards.storage import is_url
from shards.tarshard import file_sha256, write_shard

log = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"^[a-z0-9_]+-\d{6}\.tar$")
CHUNK = 16  # images per pool job: large enough to amortise IPC, small enough to balance load


@dataclass
class BuildConfig:
    """What a shard build does. Everything but `workers` and `progress` decides the output bytes."""

    out: Path | str  # a folder, or a URL (s3://bucket/prefix: shards.remote_build)
    sources: list[str]
    shard_size: int = 1000
    image_size: int = 0  # 0 keeps the original size; else the side of the square canvas
    image_format: str = "jpg"
    max_pixels: int = DEFAULT_MAX_PIXELS
    split: str = "train=100"  # rule for rows without a split of their own: name=percent,...
    order: str = "shuffle"  # shuffle (by seeded key hash, mixes datasets) | source
    seed: int = 0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    progress: bool = True

    def validate(self) -> None:
        if self.shard_size < 1:
            raise ValueError("--shard-size must be at least 1")
        if self.image_size < 0:
            raise ValueError("--image-size must be 0 (keep) or a positive side length")
        if self.image_format not in FORMATS:
            raise ValueError(f"--format must be one of {FORMATS}")
        if self.order not in ("shuffle", "source"):
            raise ValueError("--order must be 'shuffle' or 'source'")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1 (1 builds in this process), got {self.workers}")
        if self.max_pixels < 1:  # 0 would reject every image as a decompression bomb
            raise ValueError(f"--max-pixels must be a positive pixel count, got {self.max_pixels}")
        parse_split_rule(self.split)

    def output_settings(self) -> dict:
        """The settings that shape the bytes of a shard (its plan digest includes them)."""
        return {"format_version": SHARD_FORMAT_VERSION, "image_size": self.image_size,
                "image_format": self.image_format, "max_pixels": self.max_pixels,
                "knowledge_version": load_knowledge().version}

    def as_json(self) -> dict:
        out = asdict(self)
        out["out"] = str(self.out)
        del out["progress"], out["workers"]
        return out


def parse_split_rule(rule: str) -> list[tuple[str, float]]:
    parts = []
    for item in rule.split(","):
        name, _, pct = item.partition("=")
        name = name.strip()
        if not re.fullmatch(r"[a-z0-9_]+", name):
            raise ValueError(f"--split {rule!r}: split names are lower-case letters, digits and '_'")
        try:
            parts.append((name, float(pct)))
        except ValueError:
            raise ValueError(f"--split {rule!r}: expected name=percent,...") from None
        if not 0.0 <= parts[-1][1] <= 100.0:  # also refuses nan and inf
            raise ValueError(f"--split {rule!r}: the percentage of {name!r} must be between 0 and 100")
    if len({name for name, _ in parts}) < len(parts):
        raise ValueError(f"--split {rule!r}: a split is named twice")
    if abs(sum(p for _, p in parts) - 100.0) > 1e-6:
        raise ValueError(f"--split {rule!r}: percentages must add up to 100")
    return parts


def split_for(key: str, rule: list[tuple[str, float]]) -> str:
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10000 / 100.0
    edge = 0.0
    for name, pct in rule:
        edge += pct
        if bucket < edge:
            return name
    return rule[-1][0]


# ---------------------------------------------------------------- stage 5: one shard

@dataclass
class ShardTask:
    name: str
    split: str
    digest: str
    samples: list[tuple[str, dict, str]]  # (image file, base metadata, caption)


def prepare_samples(samples: list[tuple[str, dict, str]], options: ImageOptions) -> list[tuple[dict | None, dict | None]]:
    """(tar sample, None) or (None, reject) for each sample; runs in pool workers."""
    out = []
    for image_file, meta, caption in samples:
        try:
            data = Path(image_file).read_bytes()
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise ImageRejected("image file changed while the build ran")
            image = prepare_image(data, options)
        except (ImageRejected, OSError) as exc:
            reason = str(exc) if isinstance(exc, ImageRejected) else f"cannot read image file: {exc.strerror or exc}"
            out.append((None, {"source": meta["source"], "line": meta["line"], "path": meta["path"],
                               "reason": reason}))
            continue
        full = dict(meta, width=image.width, height=image.height,
                    original={"width": image.original_width, "height": image.original_height,
                              "mode": image.original_mode, "format": image.original_format},
                    converted=image.converted)
        out.append(({"__key__": meta["key"], image.ext: image.data, "txt": caption.encode("utf-8"),
                     "json": json.dumps(full, ensure_ascii=False, sort_keys=True).encode("utf-8")}, None))
    return out


def finish_shard(task: ShardTask, out: Path, prepared: list[tuple[dict | None, dict | None]]) -> dict:
    """Write one shard atomically, then its marker (the marker is what a resumed build trusts)."""
    size, sha = write_shard(out / task.name, [sample for sample, _ in prepared if sample])
    marker = {"name": task.name, "split": task.split, "digest": task.digest,
              "samples": sum(1 for sample, _ in prepared if sample), "bytes": size, "sha256": sha,
              "rejects": [reject for _, reject in prepared if reject]}
    shard_index.write_json_atomic(shard_index.marker_path(out, task.name), marker)
    return marker


def reusable_marker(out: Path, name: str, digest: str) -> dict | None:
    """The marker of a shard finished by an earlier run with the same plan, if its bytes still match."""
    marker = shard_index.read_marker(out, name)
    if not marker or marker.get("digest") != digest:
        return None
    shard = out / name
    if not shard.exists() or shard.stat().st_size != marker.get("bytes"):
        return None
    return marker if file_sha256(shard) == marker.get("sha256") else None


# ---------------------------------------------------------------- the whole build

@dataclass
class Plan:
    tasks: list[ShardTask]
    rejects: list[dict]
    duplicates: list[dict]
    rows_read: int
    sources: list[dict]


def plan_build(cfg: BuildConfig, pool: Executor | None) -> Plan:
    specs = [SourceSpec.parse(s) for s in cfg.sources]
    items: list[Record | Reject] = []
    sources = []
    for spec in specs:
        got = read_source(spec)
        log.info("read %s: %d rows", spec, len(got))
        sources.append({"spec": str(spec), "rows": len(got)})
        items.extend(got)

    rejects = [r.as_json() for r in items if isinstance(r, Reject)]
    duplicates: list[dict] = []
    records: list[Record] = []
    first_by_key: dict[str, Record] = {}
    for rec in (r for r in items if isinstance(r, Record)):
        if rec.key in first_by_key:
            duplicates.append(_duplicate(rec, first_by_key[rec.key], "same dataset and image path"))
        else:
            first_by_key[rec.key] = rec
            records.append(rec)

    cache = HashCache(shard_index.build_dir(cfg.out) / "hashes.jsonl")
    hashes = hash_images(sorted({str(r.image_file) for r in records}), cache, pool, cfg.progress)
    first_by_sha: dict[str, Record] = {}
    kept: list[tuple[Record, str]] = []
    for rec in records:
        sha, error = hashes[str(rec.image_file)]
        if error:
            rejects.append(Reject(rec.source, rec.line, rec.path, error).as_json())
        elif sha in first_by_sha:
            duplicates.append(_duplicate(rec, first_by_sha[sha], "same image content"))
        else:
            first_by_sha[sha] = rec
            kept.append((rec, sha))

    rule = parse_split_rule(cfg.split)
    by_split: dict[str, list[tuple[Record, dict]]] = {}
    for rec, sha in kept:
        split = rec.split.lower() if rec.split else split_for(rec.key, rule)
        by_split.setdefault(split, []).append((rec, base_metadata(rec, split, sha)))
    settings = json.dumps(cfg.output_settings(), sort_keys=True)
    tasks = []
    for split in sorted(by_split):
        rows = by_split[split]
        if cfg.order == "shuffle":
            rows.sort(key=lambda rm: hashlib.sha1(f"{cfg.seed}:{rm[0].key}".encode()).hexdigest())
        for number, start in enumerate(range(0, len(rows), cfg.shard_size)):
            chunk = rows[start:start + cfg.shard_size]
            samples = [(str(rec.image_file), meta, rec.caption) for rec, meta in chunk]
            digest = hashlib.sha256((settings + json.dumps([(m, c) for _, m, c in samples], sort_keys=True,
                                                            ensure_ascii=False)).encode("utf-8")).hexdigest()
            tasks.append(ShardTask(f"{split}-{number:06d}.tar", split, digest, samples))
    return Plan(tasks, rejects, duplicates, len(items), sources)


def _duplicate(rec: Record, first: Record, why: str) -> dict:
    return {"source": rec.source, "line": rec.line, "path": rec.path, "reason": why,
            "duplicate_of": {"source": first.source, "line": first.line, "path": first.path}}


Reusable = Callable[[str, str], "dict | None"]  # (shard name, plan digest) -> marker of a shard already done
Publish = Callable[[dict], None]  # called with each new shard's marker once the shard and marker are written


def run_shards(tasks: list[ShardTask], out: Path, options: ImageOptions, pool: Executor | None,
               workers: int, progress: bool, reusable: Reusable | None = None,
               publish: Publish | None = None) -> list[dict]:
    """Build the shards not already done. Images are prepared in the pool in chunks (so parallelism
    does not depend on the number of shards); shards are written here, in order, a few shards ahead.
    `reusable` and `publish` default to DIR itself; a remote build checks and uploads instead."""
    reusable = reusable or (lambda name, digest: reusable_marker(out, name, digest))
    publish = publish or (lambda marker: None)
    results: dict[str, dict] = {}
    todo = []
    for task in tasks:
        marker = reusable(task.name, task.digest)
        if marker:
            results[task.name] = marker
        else:
            todo.append(task)
    if len(todo) < len(tasks):
        log.info("resuming: %d of %d shards already built and verified", len(tasks) - len(todo), len(tasks))
    total = sum(len(t.samples) for t in tasks)
    bar = tqdm(total=total, initial=total - sum(len(t.samples) for t in todo), desc="build shards",
               unit="img", disable=not progress, file=sys.stderr)

    def submit(task: ShardTask) -> list:
        chunks = [task.samples[i:i + CHUNK] for i in range(0, len(task.samples), CHUNK)]
        if pool is None:
            return [prepare_samples(chunk, options) for chunk in chunks]
        return [pool.submit(prepare_samples, chunk, options) for chunk in chunks]

    in_flight: deque[tuple[ShardTask, list]] = deque()
    queued = iter(todo)
    for task in queued:
        in_flight.append((task, submit(task)))
        # keep every worker busy, but hold at most a few shards of images in memory
        while in_flight and (sum(len(c) for _, c in in_flight) >= 4 * workers or len(in_flight) > 8):
            results.update(_collect(in_flight.popleft(), out, bar, publish))
    while in_flight:
        results.update(_collect(in_flight.popleft(), out, bar, publish))
    bar.close()
    return [results[t.name] for t in tasks]


def _collect(entry: tuple[ShardTask, list], out: Path, bar: tqdm, publish: Publish) -> dict[str, dict]:
    task, chunks = entry
    prepared = [item for chunk in chunks for item in (chunk.result() if isinstance(chunk, Future) else chunk)]
    bar.update(len(task.samples))
    marker = finish_shard(task, out, prepared)
    publish(marker)
    return {task.name: marker}


def remove_stale(out: Path, keep: set[str]) -> None:
    """Shards and markers from an earlier, different plan would confuse readers of DIR/*.tar."""
    for path in out.iterdir():
        if (SHARD_NAME.match(path.name) and path.name not in keep) or path.name.endswith(".tar.partial"):
            path.unlink()
    for marker in shard_index.build_dir(out).glob("*.tar.json"):
        if marker.name[:-len(".json")] not in keep:
            marker.unlink()


def build(cfg: BuildConfig) -> dict:
    """Run a build (or finish an interrupted one) and return the index it wrote."""
    cfg.validate()
    if is_url(cfg.out):  # the uploading build wraps this module, so the dispatch lives with the callers
        raise ValueError(f"--out {cfg.out}: shards.build.build writes folders; shards.remote_build.build_remote "
                         "builds to a URL")
    claim_out_folder(cfg.out)  # a folder that is not one of our shard sets is refused, nothing deleted
    pool = ProcessPoolExecutor(max_workers=cfg.workers) if cfg.workers > 1 else None
    try:
        plan = plan_build(cfg, pool)
        remove_stale(cfg.out, {t.name for t in plan.tasks})
        options = ImageOptions(cfg.image_size, cfg.image_format, cfg.max_pixels)
        shards = run_shards(plan.tasks, cfg.out, options, pool, cfg.workers, cfg.progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return finish_build(cfg, plan, shards)


def finish_build(cfg: BuildConfig, plan: Plan, shards: list[dict], folder: Path | None = None) -> dict:
    """index.json, rejects.jsonl and duplicates.jsonl from the plan and the written shards' markers (in plan
    order); shared by the local builder, the remote one (into its staging `folder`) and cluster.shards_job,
    so all write the same files."""
    folder = Path(cfg.out) if folder is None else folder
    rejects = plan.rejects + [r for s in shards for r in s["rejects"]]
    index = shard_index.make_index(cfg.as_json(), plan.sources, shards, plan.rows_read, rejects,
                                   plan.duplicates, load_knowledge().vocabulary)
    shard_index.write_jsonl_atomic(folder / "rejects.jsonl", rejects)
    shard_index.write_jsonl_atomic(folder / "duplicates.jsonl", plan.duplicates)
    shard_index.write_json_atomic(folder / "index.json", index)
    _log_summary(index, rejects)
    return index


def _log_summary(index: dict, rejects: list[dict]) -> None:
    totals = index["totals"]
    log.info("rows read %d = written %d + rejected %d + duplicates %d; %d shards",
             totals["rows_read"], totals["written"], totals["rejected"], totals["duplicates"],
             len(index["shards"]))
    for reason, count in index["rejects_by_reason"].items():
        example = next(r for r in rejects if shard_index.reason_kind(r["reason"]) == reason)
        # paths and reasons come from the tables: escaped, so a control character never reaches the terminal
        log.warning("rejected %d row(s): %s (e.g. %s:%s %s)", count, printable_text(reason), example["source"],
                    example["line"], printable_text(example["path"]))
