"""Checkpoints of ranks whose run folders are not shared (several machines without shared storage).

    publish_spread(tag_dir, remote, leaders)           # save: after every rank's DeepSpeed files are written
    tag_dir = resolve_spread(run_dir, resume, remote, leaders)   # resume: the tag every rank then loads

`leaders` comes from pretrain.folder_groups: one leader rank per distinct run folder. Each machine's folder holds
only what its ranks wrote (its ZeRO optimizer partitions; rank 0's folder also the model states), so a tag is
complete only on object storage (run.remote), in the layout of pretrain.remote_checkpoint:

- save: every folder leader lists its tag folder; each file is uploaded by the lowest leader holding it (rank 0
  for everything its folder holds); once the other leaders' uploads are done, rank 0 writes the manifest of all
  the files (size and sha256 from whoever holds each), uploads its own files, the manifest, and then `latest`,
  so a reader sees the tag only once every machine's part is up.
- resume (auto): rank 0 fetches the newest complete remote tag as a run without local checkpoints does (files
  its folder already holds as the manifest lists them are copied, not downloaded), and every other folder's
  leader then fetches that same tag: every folder holds the whole tag, verified, before DeepSpeed loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from pretrain.checkpoint_files import MANIFEST, CheckpointError, file_entry, write_manifest
from pretrain.remote_checkpoint import CHECKPOINTS, fetch_checkpoint, push_checkpoint, push_files
from shards.atomic import atomic_write

__all__ = ["publish_spread", "resolve_spread"]


def _gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _from_rank0(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _raise_any(errors: list[str | None]) -> None:
    if problems := [e for e in errors if e]:
        raise CheckpointError("; ".join(problems))


def _owners(listings: list[dict[str, int]], leaders: list[int]) -> dict[str, int]:
    """Which rank uploads each file: the lowest leader whose folder holds it."""
    owners: dict[str, int] = {}
    for leader in sorted(set(leaders)):
        for name in sorted(listings[leader]):
            owners.setdefault(name, leader)
    return owners


def publish_spread(tag_dir: Path, remote: str | None, leaders: list[int]) -> None:
    """Make the tag complete on `remote` from every folder's part; call on ALL ranks. CheckpointError on every
    rank, naming the rank and the URL, if any part fails."""
    if not remote:
        raise CheckpointError("the ranks' run folders are not one shared folder, so a checkpoint is complete only "
                              "on object storage: set run.remote")
    rank = dist.get_rank()
    tag_dir = Path(tag_dir)
    listing = ({f.name: f.stat().st_size for f in tag_dir.iterdir() if f.is_file() and f.name != MANIFEST}
               if leaders[rank] == rank and tag_dir.is_dir() else {})
    mine = sorted(name for name, owner in _owners(_gather(listing), leaders).items() if owner == rank)
    entries: dict[str, dict[str, Any]] = {}
    error = None
    try:
        entries = {name: file_entry(tag_dir / name) for name in mine}
        if rank != 0:
            push_files(tag_dir, remote, mine)
    except (OSError, CheckpointError) as err:
        error = f"rank {rank}: {err}"
    parts = _gather((entries, error))  # every other machine's files are up once this returns
    _raise_any([e for _, e in parts])
    if rank == 0:
        try:
            write_manifest(tag_dir, {name: entry for part, _ in parts for name, entry in part.items()})
            atomic_write(tag_dir.parent / "latest", tag_dir.name)
            push_checkpoint(tag_dir, remote, local_files=mine)
        except (OSError, CheckpointError) as err:
            error = f"rank 0: {err}"
    _raise_any([_from_rank0(error)])


def resolve_spread(run_dir: str | Path, resume: str | None, remote: str | None, leaders: list[int]) -> Path | None:
    """The tag folder to load on every rank (each folder holding the whole tag, verified), or None to start
    fresh; call on ALL ranks."""
    if resume is None or str(resume) == "none":
        return None
    if str(resume) != "auto" or not remote:
        raise CheckpointError("the ranks' run folders are not one shared folder: resume needs run.remote and "
                              f"run.resume auto (the checkpoint comes from object storage), not {resume!r}")
    folder = Path(run_dir) / CHECKPOINTS
    rank = dist.get_rank()
    chosen, error = None, None
    if rank == 0:
        try:
            tag_dir = fetch_checkpoint(remote, folder)
            chosen = tag_dir.name if tag_dir else None
        except CheckpointError as err:
            error = str(err)
    chosen, error = _from_rank0((chosen, error))
    _raise_any([error])
    if chosen is None:
        return None
    error = None
    if leaders[rank] == rank != 0:
        try:
            fetch_checkpoint(remote, folder, only=chosen)
        except CheckpointError as err:
            error = f"rank {rank}: {err}"
    _raise_any(_gather(error))
    return folder / chosen
