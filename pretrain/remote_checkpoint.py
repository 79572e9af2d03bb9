"""A run's checkpoints mirrored to object storage (`run.remote`), and fetched back onto a machine that has none.

    push_checkpoint(tag_dir, remote)   # rank 0, once the local `latest` names tag_dir
    fetch_checkpoint(remote, folder)   # RUN_DIR/checkpoints/<tag> of the newest complete remote tag, or None

The remote prefix mirrors the run folder:

    REMOTE/config.yaml                          the resolved config (eval and export of a downloaded copy need it)
    REMOTE/checkpoints/<tag>/<file>             every file of the tag: each rank's model and optimizer states
    REMOTE/checkpoints/<tag>/manifest.json      uploaded after every file it lists (size and sha256 of each)
    REMOTE/checkpoints/latest                   the tag; uploaded after the manifest, so it names complete tags only

Ranks of one machine share the run folder, so after the barrier of pretrain.checkpoint.save_checkpoint rank 0's
tag folder holds every rank's files and rank 0 uploads them all. S3 shows an object only when its upload is
complete, so each object is atomic; the order above makes the tag atomic for a reader that checks the manifest.

A remote tag is taken only if it is at most the one `latest` names, its manifest is there and every file it lists
(plain file names only) is there with the listed size; the download then goes through
pretrain.checkpoint_files.verify_checkpoint (sha256, weights_only reads) in a staging folder before it is renamed
into place. Anything else (an upload cut short, a missing manifest, a truncated or replaced file) is skipped with
a warning saying why, for the next older tag.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from pretrain.checkpoint_files import MANIFEST, CheckpointError, verify_checkpoint
from shards.atomic import atomic_write
from shards.storage import StorageError, download, join, list_sizes, read_bytes, remove, upload

__all__ = ["CHECKPOINTS", "fetch_checkpoint", "push_checkpoint"]

CHECKPOINTS = "checkpoints"  # the same folder name under the run folder and under the remote prefix

log = logging.getLogger("pretrain.remote_checkpoint")


def _remote_error(remote: str, err: Exception) -> CheckpointError:
    # a storage failure is reported as the checkpoint failure it is, naming the option (the message names the URL)
    return CheckpointError(f"--run.remote {remote}: {err}")


def push_checkpoint(tag_dir: Path, remote: str) -> None:
    """Upload a complete local tag (its manifest written, the local `latest` naming it) and then point the remote
    `latest` at it; the run's config.yaml goes along. Rank 0 only."""
    tag_dir = Path(tag_dir)
    run_dir, tag = tag_dir.parent.parent, tag_dir.name
    remote_tag = str(join(join(remote, CHECKPOINTS), tag))
    files = sorted(json.loads((tag_dir / MANIFEST).read_text(encoding="utf-8"))["files"])
    try:
        remove(str(join(remote_tag, MANIFEST)))  # a tag saved again is incomplete until its new manifest is up
        for name in files:
            upload(tag_dir / name, str(join(remote_tag, name)))
        upload(tag_dir / MANIFEST, str(join(remote_tag, MANIFEST)))
        if (run_dir / "config.yaml").is_file():
            upload(run_dir / "config.yaml", str(join(remote, "config.yaml")))
        upload(tag_dir.parent / "latest", str(join(join(remote, CHECKPOINTS), "latest")))
    except (OSError, StorageError) as err:
        raise _remote_error(remote, err) from None


def _incomplete(tag: str, objects: dict[str, int], manifest: dict) -> str | None:
    """Why the remote tag is not a complete upload of what its manifest lists, or None."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no files"
    for name, want in sorted(files.items()):
        if Path(name).name != name or name in (".", "..") or not isinstance(want, dict):
            return f"{MANIFEST} lists {name!r}, not a file of the tag"  # nothing is written outside the staging
        got = objects.get(f"{tag}/{name}")
        if got is None:
            return f"{name} is listed in {MANIFEST} but missing"
        if got != want.get("size"):
            return f"{name} has {got} bytes, {MANIFEST} says {want.get('size')} (truncated or replaced)"
    return None


def _download_tag(remote_tag: str, names: list[str], folder: Path, tag: str) -> Path:
    """Download into a staging folder beside the tags, verify, rename into place; the verified tag folder."""
    staging = folder / f".fetch-{tag}"
    shutil.rmtree(staging, ignore_errors=True)  # a fetch cut short before
    staging.mkdir(parents=True)
    try:
        for name in names:
            download(str(join(remote_tag, name)), staging / name)
        verify_checkpoint(staging)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target = folder / tag
    if target.exists():  # not named by a local `latest` (there is none): a local save that never finished
        log.warning("replacing %s, a local checkpoint that never completed, with the remote copy", target)
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def fetch_checkpoint(remote: str, folder: Path) -> Path | None:
    """Copy the newest complete remote tag into `folder` (RUN_DIR/checkpoints, which has no `latest`), point the
    local `latest` at it and return its folder; None (with a warning) when the remote holds none."""
    folder = Path(folder)
    remote_ckpts = str(join(remote, CHECKPOINTS))
    try:
        objects = list_sizes(remote_ckpts)
        latest = read_bytes(join(remote_ckpts, "latest")).decode("utf-8").strip() if "latest" in objects else None
    except (OSError, StorageError) as err:
        raise _remote_error(remote, err) from None
    tags = sorted({name.split("/", 1)[0] for name in objects if "/" in name}, reverse=True)
    if not latest:
        if tags:
            log.warning("%s: no `latest` object, so none of %s is taken (uploads that never finished); starting "
                        "fresh", remote_ckpts, ", ".join(tags))
        return None
    if latest not in tags:
        log.warning("%s/latest names %s, which holds no object; trying older tags", remote_ckpts, latest)
    for tag in tags:
        url = f"{remote_ckpts}/{tag}"
        if tag > latest:
            log.warning("skipping %s: newer than the tag `latest` names (%s), an upload that never finished", url,
                        latest)
            continue
        if f"{tag}/{MANIFEST}" not in objects:
            log.warning("skipping %s: no %s (an upload cut short, or not ours)", url, MANIFEST)
            continue
        try:
            manifest = json.loads(read_bytes(f"{url}/{MANIFEST}"))
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (OSError, StorageError, ValueError) as err:
            log.warning("skipping %s: its %s is unreadable (%s)", url, MANIFEST, err)
            continue
        if problem := _incomplete(tag, objects, manifest):
            log.warning("skipping %s: %s", url, problem)
            continue
        try:
            tag_dir = _download_tag(url, [*sorted(manifest["files"]), MANIFEST], folder, tag)
        except CheckpointError as err:
            log.warning("skipping %s: the downloaded copy fails verification: %s", url, err)
            continue
        except (OSError, StorageError) as err:
            raise _remote_error(remote, err) from None
        atomic_write(folder / "latest", tag)
        log.warning("no local checkpoint: fetched %s from %s", tag, remote_ckpts)
        return tag_dir
    log.warning("%s holds no complete checkpoint; starting fresh", remote_ckpts)
    return None
