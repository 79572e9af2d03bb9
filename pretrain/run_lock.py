"""One training per run folder: an exclusive lock on RUN_DIR/.lock, held while a training runs in it.

    with hold_run_lock(cfg.run.dir):     # RunLocked, naming the holder, if another training holds the folder
        ...build, resume, train, checkpoint...

Two trainings in one folder would both resume from (or both start without) the same checkpoint and then write
each other's tags. The lock is flock(2): the kernel drops it when the holding process ends, however it ends
(kill -9 included), so a killed run can be resumed at once and no stale lock file ever needs cleaning. The
holder writes its pid, host and start time into the file, only so that a refused process can name it.

Only the process of global rank 0 takes the lock (see hold_run_lock). Evaluation, export and embedding only
read a run and never take it, so they work while the run trains.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "RunLocked", "hold_run_lock", "launch_rank"]

LOCK_NAME = ".lock"


class RunLocked(RuntimeError):
    """Another training holds the run folder; the message names the folder and the holder."""


def launch_rank() -> int:
    """This process's global rank, also before the process group exists: launchers (deepspeed, torchrun) set
    RANK; Ray Train initialises the group before the training function runs; a plain process is rank 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):  # written a moment ago, or by something else
        return "holder unknown"


def _acquire(run_dir: Path) -> int:
    """The open, locked lock file's descriptor, with this process recorded in it; RunLocked if held."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    # Opened without truncating: until we hold the lock the file belongs to the holder and names it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe_holder(path.read_text(encoding="utf-8", errors="replace"))
        os.close(fd)
        raise RunLocked(f"run folder {run_dir} is in use by another training ({holder}); wait for it to end "
                        "or give another --run.dir") from None
    except BaseException:
        os.close(fd)
        raise
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}) + "\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode("utf-8"), 0)
    return fd


@contextlib.contextmanager
def hold_run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold RUN_DIR/.lock for the block (see the module doc); RunLocked at once if another training holds it.

    Only global rank 0 locks: every rank of a job shares the one run folder, so any other rank locking it
    would be refused by its own rank 0; and one lock per node (local rank 0) would make the nodes of one job
    refuse each other on shared storage. Rank 0 also writes config.yaml and moves `latest`, so it is the
    process whose exclusion matters."""
    if launch_rank() != 0:
        yield
        return
    fd = _acquire(Path(run_dir))
    try:
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
