"""Samples the data pipeline lost, per shard: what index.json promises against what was really read.

A shard loses samples in three ways, each counted here and named in the log and in the run's summary:

- at start it is missing, or its size (with data.verify_sha256, also its sha256) differs from index.json: it
  is left out and all its samples are lost (`check_shards`, before any worker starts);
- while streaming, its tar ends early or stops parsing: the samples it did not yield are lost (`read_shards`);
- one of its samples does not decode (pretrain.samples.decode_sample): that sample is lost.

Each process (each DataLoader worker) keeps one ledger, LOSSES; every batch carries a snapshot of it
(pretrain.data.Collate) and the trainer merges the snapshots of all workers and ranks (`merge`) by taking, per
shard, the largest loss any of them saw. Every reader of a shard meets the same damage and a resampled stream
meets it again on every pass, so the largest is the loss of the data set, never a multiple of it. The run
stops with DataLossError once the samples lost exceed data.max_lost_fraction of the samples it trains on.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shards.index import load_index
from shards.printable import error_text
from shards.storage import is_url, join, local_or_url, register_with_webdataset, sha256 as stream_sha256, size
from shards.tarshard import file_sha256

register_with_webdataset()  # shard URLs (s3://) stream through fsspec, in DataLoader workers too

log = logging.getLogger("pretrain.data")

__all__ = ["LOSSES", "DataLossError", "LossLedger", "ShardCheck", "check_shards", "describe_losses",
           "lost_fraction", "merge", "read_shards"]


class DataLossError(RuntimeError):
    """More samples were lost than data.max_lost_fraction allows; the message names the shards."""


# ----------------------------------------------------------------------------- one process's ledger


class LossLedger:
    """Samples lost in this process: whole or partial shards (left out, ended early) and undecodable samples."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.totals: dict[str, int] = {}  # shard set folder -> samples its split promises
        self.unread: dict[str, tuple[int, str]] = {}  # shard -> (samples never read, why)
        self.bad_samples: dict[str, dict[str, str]] = {}  # shard -> {key: why it does not decode}

    def expect(self, shard_set: str, samples: int) -> None:
        self.totals[shard_set] = samples

    def left_out(self, shard: str, samples: int, reason: str) -> None:
        self.unread[shard] = (samples, reason)

    def shard_read(self, shard: str, expected: int, read: int, error: Exception | None) -> None:
        """One pass over a shard ended (normally or with `error`) after `read` samples of `expected`."""
        lost = expected - read
        if lost <= 0:
            if error is not None:
                log.warning("%s: %s after all %d samples (nothing lost)", shard, error_text(error), read)
            return
        reason = f"tar ends after {read} of {expected} samples" + (f": {error_text(error)}" if error else "")
        if shard not in self.unread:
            log.warning("%s: %d samples lost: %s", shard, lost, reason)
        if lost > self.unread.get(shard, (0, ""))[0]:
            self.unread[shard] = (lost, reason)

    def bad_sample(self, shard: str, key: str, reason: str) -> bool:
        """Record an undecodable sample; True the first time this key is met."""
        keys = self.bad_samples.setdefault(shard, {})
        new = key not in keys
        keys.setdefault(key, reason)
        return new

    def snapshot(self) -> dict[str, Any]:
        """{"totals": {set: samples}, "shards": {shard: [lost, why]}}: plain JSON, only damaged shards listed."""
        shards: dict[str, list] = {}
        for shard in sorted(set(self.unread) | set(self.bad_samples)):
            lost, why = self.unread.get(shard, (0, ""))
            bad = self.bad_samples.get(shard, {})
            if bad:
                key, reason = next(iter(bad.items()))
                undecodable = f"{len(bad)} sample(s) do not decode (first {key}: {reason})"
                why = f"{why}; {undecodable}" if why else undecodable
            shards[shard] = [lost + len(bad), why]
        return {"totals": dict(self.totals), "shards": shards}


LOSSES = LossLedger()


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Snapshots of several workers or ranks as one: per shard, the largest loss seen (see the module doc)."""
    totals: dict[str, int] = {}
    shards: dict[str, list] = {}
    for snap in snapshots:
        for name, samples in snap.get("totals", {}).items():
            totals[name] = max(totals.get(name, 0), int(samples))
        for shard, (lost, why) in snap.get("shards", {}).items():
            if shard not in shards or lost > shards[shard][0]:
                shards[shard] = [int(lost), why]
    return {"totals": totals, "shards": shards}


def lost_fraction(merged: dict[str, Any]) -> tuple[int, int]:
    """(samples lost, samples promised) of a merged snapshot."""
    return sum(lost for lost, _ in merged["shards"].values()), sum(merged["totals"].values())


def describe_losses(merged: dict[str, Any], limit: int = 10) -> str:
    """'lost N of M samples (x%): SHARD: n (why); ...' naming at most `limit` shards, worst first."""
    lost, total = lost_fraction(merged)
    worst = sorted(merged["shards"].items(), key=lambda item: -item[1][0])
    named = "; ".join(f"{shard}: {n} ({why})" for shard, (n, why) in worst[:limit])
    more = f"; and {len(worst) - limit} more shard(s)" if len(worst) > limit else ""
    return f"lost {lost} of {total} samples ({100 * lost / max(total, 1):.1f}%): {named}{more}"


# ----------------------------------------------------------------------------- start-up check


@dataclass(frozen=True)
class ShardCheck:
    """One split of one shard set, checked against its index.json."""

    shard_set: str
    urls: tuple[str, ...]  # the shards to read
    expected: dict[str, int]  # shard -> samples index.json promises
    left_out: dict[str, tuple[int, str]]  # shard -> (samples, why it is not read)
    total: int  # samples the split promises


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # keyed on size and mtime: a changed file is re-hashed
    return file_sha256(Path(path))


def check_shards(shard_dir: str | Path, split: str, sha256: bool = False) -> ShardCheck:
    """Each shard of the split against index.json: present, the right size and (if `sha256`) the right hash.

    A shard that fails is left out (logged at WARNING with the reason); the caller decides whether the loss
    is acceptable (`lost_fraction`)."""
    shard_dir = local_or_url(shard_dir)
    entries = [s for s in load_index(shard_dir)["shards"] if s["split"] == split]
    if not entries:
        raise ValueError(f"{shard_dir}: no shards for split {split!r}")
    urls, expected, left_out = [], {}, {}
    for entry in entries:
        path = join(shard_dir, entry["name"])
        expected[str(path)] = int(entry["samples"])
        problem = _shard_problem(path, entry, sha256)
        if problem is None:
            urls.append(str(path))
        else:
            left_out[str(path)] = (int(entry["samples"]), problem)
            log.warning("%s: left out, all %d samples lost: %s", path, entry["samples"], problem)
    return ShardCheck(str(shard_dir), tuple(urls), expected, left_out, sum(expected.values()))


def _shard_problem(path: Path | str, entry: dict, sha256: bool) -> str | None:
    if is_url(path):
        return _object_problem(str(path), entry, sha256)
    try:
        stat = os.stat(path)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.st_size != entry["bytes"]:
        return f"{stat.st_size} bytes, index.json says {entry['bytes']} (truncated or replaced)"
    if sha256 and _sha256(str(path), stat.st_size, stat.st_mtime_ns) != entry["sha256"]:
        return "sha256 differs from index.json (the bytes changed)"
    return None


def _object_problem(url: str, entry: dict, sha256: bool) -> str | None:
    """_shard_problem for an object (no mtime to key a hash cache on: data.verify_sha256 reads it each time)."""
    try:
        got = size(url)
    except (OSError, ValueError) as exc:  # FileNotFoundError, StorageError
        return f"cannot be read: {exc}"
    if got != entry["bytes"]:
        return f"{got} bytes, index.json says {entry['bytes']} (truncated or replaced)"
    if sha256 and stream_sha256(url) != entry["sha256"]:
        return "sha256 differs from index.json (the bytes changed)"
    return None


# ----------------------------------------------------------------------------- streaming


def read_shards(src: Iterable[dict], check: ShardCheck, select_files: Any) -> Iterator[dict]:
    """webdataset stage: shard urls -> raw samples, counting per pass what each shard did not yield.

    Replaces wds.tarfile_to_samples, whose error handler cannot tell how much of a shard was lost. The
    shards `check` left out and the split's total are entered in this process's ledger first, so every
    worker's snapshot carries them."""
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    LOSSES.expect(check.shard_set, check.total)
    for shard, (samples, why) in check.left_out.items():
        LOSSES.left_out(shard, samples, why)
    empty_in_a_row = 0
    for item in src:
        url = item["url"]
        read, error = 0, None
        try:
            with gopen(url, "rb") as stream:
                for sample in group_by_keys(_with_url(tar_file_iterator(stream, select_files=select_files), url)):
                    read += 1
                    yield sample
        except Exception as exc:  # a torn or garbled tar: what it did not yield is counted, the stream goes on
            error = exc
        LOSSES.shard_read(url, check.expected.get(url, read), read, error)
        empty_in_a_row = 0 if read else empty_in_a_row + 1
        if empty_in_a_row >= max(10, 3 * len(check.urls)):  # a resampled stream would otherwise spin forever
            raise DataLossError(f"{check.shard_set}: {empty_in_a_row} shard reads in a row yielded no sample "
                                f"(last: {url}); run `retina-shards verify {check.shard_set}`")


def _with_url(members: Iterable[dict], url: str) -> Iterator[dict]:
    for member in members:
        member["__url__"] = url  # group_by_keys copies it into the sample
        yield member
