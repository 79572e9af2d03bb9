"""What a checkpoint's files must pass before anything loads them: a manifest and a pickle-safe read.

    write_manifest(tag_dir)          # after every rank saved, before `latest` names the tag (rank 0)
    verify_checkpoint(tag_dir)       # CheckpointError naming the file, or None: safe to hand to DeepSpeed
    state = safe_load(path)          # torch.load(weights_only=True) with three DeepSpeed classes allowed

DeepSpeed (0.19.8) loads its own files with torch.load(weights_only=False), which would run any code a
tampered file holds. So every load path (resume, eval, export, embed) first reads every `*.pt` file of the tag
with torch.load(weights_only=True), allowing only tensors, plain containers and these DeepSpeed classes
(SAFE_DEEPSPEED_GLOBALS; what the fp32 ZeRO 0-3 files of DeepSpeed 0.19.8 hold, measured with
torch.serialization.get_unsafe_globals_in_checkpoint):

    deepspeed.runtime.zero.config.ZeroStageEnum        optimizer files, "zero_stage"
    deepspeed.runtime.fp16.loss_scaler.LossScaler      optimizer files, the (static) loss scaler
    deepspeed.utils.tensor_fragment.fragment_address   ZeRO-1/2 optimizer files, parameter slice addresses

`manifest.json` records the size and sha256 of every file of the tag as written, so a file damaged later (a
flipped block that still unzips, a truncation) is caught before its bytes are trusted; a tag without a
manifest (written before manifests existed) is checked by the safe read alone. The checks cost one extra read
of each file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["MANIFEST", "SAFE_DEEPSPEED_GLOBALS", "CheckpointError", "file_entry", "safe_load", "verify_checkpoint",
           "write_manifest"]

MANIFEST = "manifest.json"
SAFE_DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, incomplete, corrupted, or holding unexpected pickles)."""


def _safe_globals() -> list[Any]:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as pretrain.engine: no accelerator-detection warning
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def safe_load(path: str | Path, allow_deepspeed: bool = True) -> Any:
    """torch.load(path, weights_only=True) on the CPU, with the DeepSpeed classes above allowed; any failure is a
    CheckpointError naming the file (truncated archive, a global outside the allow-list, ...)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing checkpoint file {str(path)!r}")
    try:
        if allow_deepspeed:
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refusing {str(path)!r}: it does not load with torch.load(weights_only=True) "
                              f"({str(err).splitlines()[0]})") from err
    except Exception as err:  # zip reader errors (truncated file), EOFError, ...
        raise CheckpointError(f"cannot read {str(path)!r} (truncated or corrupted?): "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """What the manifest records of one file."""
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def write_manifest(tag_dir: str | Path, files: dict[str, dict[str, Any]] | None = None) -> Path:
    """Record the size and sha256 of every file of the tag (call once, after every rank's files are written);
    `files` instead: entries gathered from several folders (ranks on machines without a shared run folder)."""
    from shards.atomic import atomic_write

    tag_dir = Path(tag_dir)
    if files is None:
        files = {f.name: file_entry(f) for f in sorted(tag_dir.iterdir()) if f.is_file() and f.name != MANIFEST}
    files = dict(sorted(files.items()))
    atomic_write(tag_dir / MANIFEST, json.dumps({"files": files}, indent=1) + "\n")
    return tag_dir / MANIFEST


def _check_manifest(tag_dir: Path) -> None:
    path = tag_dir / MANIFEST
    if not path.is_file():
        return
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{str(path)!r} is unreadable ({type(err).__name__})") from None
    for name, want in files.items():
        f = tag_dir / name
        if not f.is_file():
            raise CheckpointError(f"{str(f)!r} is listed in {MANIFEST} but missing")
        if f.stat().st_size != want["size"] or _sha256(f) != want["sha256"]:
            raise CheckpointError(f"{str(f)!r} differs from what was written (size or sha256 against {MANIFEST}): "
                                  "the file is damaged")


def verify_checkpoint(tag_dir: str | Path) -> None:
    """Raise CheckpointError (naming the file) unless the tag's manifest matches and every *.pt file passes the
    safe read; after this, DeepSpeed's own (unsafe) loader only ever sees files that held nothing but data."""
    tag_dir = Path(tag_dir)
    _check_manifest(tag_dir)
    pt_files = sorted(tag_dir.glob("*.pt"))
    if not pt_files:
        raise CheckpointError(f"{str(tag_dir)!r} holds no checkpoint file (*.pt)")
    for f in pt_files:
        safe_load(f)
