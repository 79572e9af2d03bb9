"""Which ranks see the same run folder: every rank on a shared filesystem, or the ranks of one machine each.

    leaders = folder_leaders(run_dir)   # on ALL ranks; leaders[r] = the lowest rank that sees rank r's folder

On one machine, or with run.dir on storage every node mounts, every rank sees one folder: leaders is all zeros
and checkpoints work as they always did (rank 0 lists, verifies and uploads every rank's files). Across
machines without shared storage each machine has its own folder holding only its ranks' checkpoint files, so a
checkpoint is complete only on object storage (run.remote): pretrain.checkpoint then has each folder's leader
upload the files only its folder holds, and on resume each leader completes its copy from the remote tag.

Found by writing, not guessed from host names (a container or a network namespace shares one host name with
its neighbours, and two hosts may share a filesystem): the lowest rank not yet placed writes a random token into
its folder, every rank reads its own folder's file, and the ranks that read that token join the writer's group;
repeated until every rank is placed (once per distinct folder).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import torch.distributed as dist

from shards.atomic import atomic_write

__all__ = ["PROBE", "folder_leaders", "shares_one_folder"]

PROBE = ".folder-probe"


def folder_leaders(run_dir: str | Path) -> list[int]:
    """leaders[r] for every rank r; [0] * world when all share one folder. Call on ALL ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [0]
    rank, world = dist.get_rank(), dist.get_world_size()
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / PROBE
    leaders: list[int | None] = [None] * world
    while None in leaders:
        writer = leaders.index(None)
        box = [secrets.token_hex(16) if rank == writer else None]
        dist.broadcast_object_list(box, src=writer)
        if rank == writer:
            atomic_write(probe, box[0])
        dist.barrier()  # the token is on the writer's disk before anyone looks
        try:
            sees = leaders[rank] is None and probe.read_text(encoding="utf-8") == box[0]
        except OSError:  # no probe in this folder yet
            sees = False
        seen: list[bool] = [False] * world
        dist.all_gather_object(seen, sees)  # also: everyone has read before the next writer overwrites
        for r, flag in enumerate(seen):
            if flag:
                leaders[r] = writer
    if leaders[rank] == rank:
        probe.unlink(missing_ok=True)
    dist.barrier()
    return [int(r) for r in leaders]  # type: ignore[arg-type]


def shares_one_folder(leaders: list[int]) -> bool:
    return all(r == leaders[0] for r in leaders)
