"""Checkpointing of a DeepSpeed engine: one tag per step under RUN_DIR/checkpoints, plus the run's config.

    RUN_DIR/config.yaml                    the resolved config (save_run_config)
    RUN_DIR/checkpoints/step00001000/      DeepSpeed's files (model states, ZeRO optimizer partitions)
    RUN_DIR/checkpoints/latest             the tag of the newest COMPLETE checkpoint

`latest`: DeepSpeed (0.19.8) writes it itself with a plain open/write on rank 0, which a crash can leave
empty or half-written. We pass save_latest=False and write it ourselves atomically (shards.atomic: fsync,
rename, fsync the folder), after a barrier that follows every rank's save, so `latest` only ever names a
finished checkpoint. Before `latest` moves, rank 0 writes the tag's manifest.json (size and sha256 of every
file; pretrain.checkpoint_files). With `run.remote` set, rank 0 then uploads the tag and moves the remote `latest`
(pretrain.remote_checkpoint), and `run.resume: auto` on a run folder without checkpoints fetches the newest
complete remote tag first. Ranks on machines without a shared run folder each write their part into their own
folder; the tag is then complete only on run.remote (pretrain.spread_checkpoint, pretrain.folder_groups).

Resuming never trusts a file: the tag is verified first (manifest, then every *.pt read with
torch.load(weights_only=True) and a three-class allow-list) and only then handed to DeepSpeed, whose own loader
unpickles with weights_only=False. With `run.resume: auto` a tag that fails is skipped, with a warning naming
the file, for the newest older tag that verifies; an explicit checkpoint that fails is an error.

client_state holds the step, the caller's extras and the RNG states of EVERY rank (gathered to one list):
DeepSpeed stores client_state only in data-parallel rank 0's file, so per-rank RNG would otherwise be lost.
The RNG states are kept to plain Python containers and tensors, so they load under weights_only=True.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pretrain.checkpoint_files import CheckpointError, verify_checkpoint, write_manifest
from pretrain.config import save_config
from pretrain.engine import parameters_finite
from pretrain.folder_groups import shares_one_folder
from pretrain.remote_checkpoint import CHECKPOINTS, fetch_checkpoint, push_checkpoint
from pretrain.spread_checkpoint import publish_spread, resolve_spread
from shards.atomic import atomic_write

__all__ = ["CHECKPOINT_DIR", "CheckpointError", "find_run_config", "get_rng_state", "load_checkpoint",
           "resolve_checkpoint", "resolve_resume", "save_checkpoint", "save_run_config", "set_rng_state", "step_tag"]

CHECKPOINT_DIR = CHECKPOINTS

log = logging.getLogger("pretrain.checkpoint")


def step_tag(step: int) -> str:
    return f"step{step:08d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def get_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, as plain containers and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    # random.setstate wants nested tuples; a round trip through some serialisers gives lists.
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _all_rng_states() -> list[dict[str, Any]]:
    local = get_rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def save_run_config(run_dir: str | Path, config: Any) -> None:
    """Write the resolved config (a dict or config dataclass) as RUN_DIR/config.yaml; rank 0 only."""
    if _rank() == 0:
        save_config(config, Path(run_dir) / "config.yaml")


def save_checkpoint(engine: Any, run_dir: str | Path, step: int, extra: dict[str, Any] | None = None,
                    remote: str | None = None, leaders: list[int] | None = None) -> Path:
    """Save the engine (module, optimizer, scheduler) as tag step{step:08d}; call on ALL ranks.

    Returns the checkpoint's folder. `extra` goes into client_state beside the step and RNG states. With
    `remote` (run.remote), the complete tag is uploaded there; a failed upload is a CheckpointError on every rank.
    `leaders` (pretrain.folder_groups): ranks on several run folders upload their parts (spread_checkpoint)."""
    save_dir = Path(run_dir) / CHECKPOINT_DIR
    tag = step_tag(step)
    client_state = {**(extra or {}), "step": step, "rng": _all_rng_states()}
    engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False)
    _barrier()  # every rank's shards are on disk before the manifest lists them and `latest` names them
    if leaders is not None and not shares_one_folder(leaders):
        publish_spread(save_dir / tag, remote, leaders)
        return save_dir / tag

    def publish() -> None:
        write_manifest(save_dir / tag)
        atomic_write(save_dir / "latest", tag)
        if remote:
            push_checkpoint(save_dir / tag, remote)

    _decided_on_rank0(publish)  # rank 0 writes; every rank waits for it and shares its error
    return save_dir / tag


def _has_model_states(folder: Path) -> bool:
    return any(folder.glob("*model_states.pt"))


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """The tag folder meant by `checkpoint`: a run dir (RUN_DIR/checkpoints/latest), a folder with `latest`, or a
    tag folder itself (one holding *model_states.pt files)."""
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    if path.is_dir() and _has_model_states(path):
        return path
    for folder in (path, path / CHECKPOINT_DIR):
        latest = folder / "latest"
        if latest.is_file():
            tag = latest.read_text(encoding="utf-8").strip()
            if not tag:
                raise CheckpointError(f"{str(latest)!r} is empty")
            tag_dir = folder / tag
            if not tag_dir.is_dir():
                raise CheckpointError(f"{str(latest)!r} names tag {tag!r}, but {str(tag_dir)!r} does not exist")
            return tag_dir
    raise CheckpointError(f"{str(path)!r} is not a checkpoint: expected a run dir with checkpoints/latest, a "
                          "checkpoints folder with a 'latest' tag file, or a tag folder with *model_states.pt files")


def find_run_config(checkpoint: str | Path) -> Path:
    """RUN_DIR/config.yaml of the run that wrote `checkpoint` (run dir, checkpoints folder or tag folder)."""
    path = Path(checkpoint)
    for folder in (path, path.parent, path.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise CheckpointError(f"{str(path / 'config.yaml')!r} missing: no config.yaml of the run in {str(path)!r} or "
                          "the two folders above it (is it a run folder of retina-pretrain train?)")


def resolve_resume(run_dir: str | Path, resume: str | Path | None, remote: str | None = None) -> Path | None:
    """The verified tag folder to resume from, or None to start fresh.

    "auto": RUN_DIR/checkpoints/latest, or, when it fails verification, the newest older tag that passes (with
    a warning naming what failed); fresh when there is no checkpoint; a CheckpointError naming every failure
    when none passes. With `remote` and no local `latest`: the newest complete remote tag, downloaded and
    verified (pretrain.remote_checkpoint.fetch_checkpoint), or fresh. None or "none": fresh. A path: anything
    resolve_checkpoint takes, which must verify."""
    if resume is None or str(resume) == "none":
        return None
    if str(resume) != "auto":
        tag_dir = resolve_checkpoint(resume)
        verify_checkpoint(tag_dir)
        return tag_dir
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not (folder / "latest").is_file():
        return fetch_checkpoint(remote, folder) if remote else None  # fetched tags are verified already
    latest = resolve_checkpoint(run_dir)
    candidates = [latest] + sorted((d for d in folder.glob("step*") if d.is_dir() and d.name < latest.name),
                                   reverse=True)
    failures = []
    for tag_dir in candidates:
        try:
            verify_checkpoint(tag_dir)
        except CheckpointError as err:
            failures.append(str(err))
            log.warning("checkpoint %s fails verification, trying an older one: %s", tag_dir.name, err)
            continue
        return tag_dir
    raise CheckpointError(f"no checkpoint under {str(folder)!r} passes verification: " + "; ".join(failures))


def _decided_on_rank0(decide: Any) -> Any:
    """decide() on rank 0 only (verifying a checkpoint reads every rank's files once, not once per rank), its
    result or CheckpointError given to every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decide()
    box: list[Any] = [None]
    if _rank() == 0:
        try:
            box = [("ok", decide())]
        except CheckpointError as err:
            box = [("error", str(err))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise CheckpointError(value)
    return value


def load_checkpoint(engine: Any, run_dir: str | Path, resume: str | Path | None = "auto",
                    remote: str | None = None, leaders: list[int] | None = None) -> dict[str, Any] | None:
    """Load module, optimizer and scheduler states into `engine` and restore this rank's RNG states; call on ALL
    ranks after build_engine. Returns the client_state (step, extras; RNG removed) or None for a fresh start.
    `remote` (run.remote): where resume "auto" looks when the run folder has no checkpoint; rank 0 downloads
    into the run folder, which the ranks of one machine share. `leaders` (pretrain.folder_groups): with several
    run folders the tag comes from `remote` into each of them (spread_checkpoint)."""
    if leaders is not None and not shares_one_folder(leaders):
        tag_dir = resolve_spread(run_dir, None if resume is None else str(resume), remote, leaders)
    else:
        tag_dir = _decided_on_rank0(lambda: resolve_resume(run_dir, resume, remote))
    if tag_dir is None:
        return None
    load_dir, tag = tag_dir.parent, tag_dir.name
    path, client_state = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag!r} from {str(load_dir)!r}")
    if not parameters_finite(engine.module):
        raise CheckpointError(f"{str(tag_dir)!r}: the loaded weights hold NaN or inf; training from them would skip "
                              "every step (resume from an earlier checkpoint with --run.resume PATH)")
    client_state = dict(client_state)
    rng = client_state.pop("rng", None)
    if rng:
        # A resume on a different world size gives rank r the saved state of rank r mod the saved count.
        set_rng_state(rng[_rank() % len(rng)])
    return client_state
