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

from pretrain.checkpoint_files import MANIFEST, CheckpointError, file_entry, verify_checkpoint
from shards.atomic import atomic_write
from shards.storage import StorageError, download, join, list_sizes, read_bytes, remove, upload

__all__ = ["CHECKPOINTS", "fetch_checkpoint", "push_checkpoint"]

CHECKPOINTS = "checkpoints"  # the same folder name under the run folder and under the remote prefix

log = logging.getLogger("pretrain.remote_checkpoint")


def _remote_error(remote: str, err: Exception) -> CheckpointError:
    # a storage failure is reported as the checkpoint failure it is, naming the option (the message names the URL)
    return CheckpointError(f"--run.remote {remote}: {err}")


def push_files(tag_dir: Path, remote: str, names: list[str]) -> None:
    """Upload some files of a local tag, nothing else: the files only this machine's run folder holds, when the
    ranks' folders are not shared (pretrain.folder_groups); rank 0 uploads the manifest after them."""
    tag_dir = Path(tag_dir)
    remote_tag = str(join(join(remote, CHECKPOINTS), tag_dir.name))
    try:
        for name in names:
            upload(tag_dir / name, str(join(remote_tag, name)))
    except (OSError, StorageError) as err:
        raise _remote_error(remote, err) from None


def push_checkpoint(tag_dir: Path, remote: str, local_files: list[str] | None = None) -> None:
    """Upload a complete local tag (its manifest written, the local `latest` naming it) and then point the remote
    `latest` at it; the run's config.yaml goes along. Rank 0 only. `local_files`: upload only these of the files
    the manifest lists, the others being up already (uploaded by push_files from other machines' folders)."""
    tag_dir = Path(tag_dir)
    run_dir, tag = tag_dir.parent.parent, tag_dir.name
    remote_tag = str(join(join(remote, CHECKPOINTS), tag))
    files = sorted(json.loads((tag_dir / MANIFEST).read_text(encoding="utf-8"))["files"])
    files = files if local_files is None else sorted(set(files) & set(local_files))
    try:
        if local_files is None:  # (with several folders the others' files are up already, so is the tag's state)
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


def _same_file(local: Path, want: dict) -> bool:
    try:
        return local.is_file() and local.stat().st_size == want.get("size") and file_entry(local) == want
    except OSError:
        return False


def _download_tag(remote_tag: str, manifest: dict, folder: Path, tag: str) -> Path:
    """Download into a staging folder beside the tags, verify, rename into place; the verified tag folder. A file
    the local tag folder already holds as the manifest lists it (this machine's own part of a checkpoint saved
    by ranks on several machines) is copied instead of downloaded."""
    staging = folder / f".fetch-{tag}"
    shutil.rmtree(staging, ignore_errors=True)  # a fetch cut short before
    staging.mkdir(parents=True)
    target = folder / tag
    try:
        for name, want in sorted(manifest["files"].items()):
            if _same_file(target / name, want):
                shutil.copyfile(target / name, staging / name)
            else:
                download(str(join(remote_tag, name)), staging / name)
        download(str(join(remote_tag, MANIFEST)), staging / MANIFEST)
        verify_checkpoint(staging)
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():  # a local save that never finished, or this machine's part of a several-folder save
        log.info("replacing the local copy of %s with the complete remote one", target)
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def fetch_checkpoint(remote: str, folder: Path, only: str | None = None) -> Path | None:
    """Copy the newest complete remote tag into `folder` (RUN_DIR/checkpoints, which has no `latest`), point the
    local `latest` at it and return its folder; None (with a warning) when the remote holds none. `only`: that
    tag and no other (the one rank 0 fetched, for the other machines of a run without a shared run folder); a
    CheckpointError when it is not complete."""
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
        if only is not None and tag != only:
            continue
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
            tag_dir = _download_tag(url, manifest, folder, tag)
        except CheckpointError as err:
            log.warning("skipping %s: the downloaded copy fails verification: %s", url, err)
            continue
        except (OSError, StorageError) as err:
            raise _remote_error(remote, err) from None
        atomic_write(folder / "latest", tag)
        log.warning("fetched %s from %s", tag, remote_ckpts)
        return tag_dir
    if only is not None:
        raise CheckpointError(f"{remote_ckpts}/{only} is not a complete checkpoint (the warnings above say why)")
    log.warning("%s holds no complete checkpoint; starting fresh", remote_ckpts)
    return None
