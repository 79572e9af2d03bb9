"""Initialise a freshly built model from an export folder, a .safetensors file or a run of ours (model.init_from).

    load_init_weights(model, "exported/demo")     # strict: every tensor present, same shape, nothing else
    load_init_weights(model, "runs/flair")        # a training run: its checkpoints/latest, consolidated

An export or a file is read as safetensors only. A run folder (or its checkpoints folder, or one tag folder) is
consolidated by pretrain.consolidate, which reads every file with torch.load(weights_only=True) first, so
nothing pickled runs either. The run's training-only modules (`auxiliary.*`: revision attention, momentum
encoders, queues) are left out: the new run's objective adds its own afterwards, freshly initialised (how
KeepFIT V1 continues from a FLAIR run).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from shards.printable import error_text, printable

__all__ = ["HFImportError", "is_run_checkpoint", "load_init_weights", "read_weights", "run_weights",
           "safetensors_problem", "weights_file"]

log = logging.getLogger("pretrain.init_weights")

DECODER_PREFIX = "caption_decoder."
MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers too


class HFImportError(ValueError):
    """An export folder or weights file that cannot initialise the model."""


def is_run_checkpoint(path: str | Path) -> bool:
    """A folder without model.safetensors: init_from then means a training run (or a checkpoint inside one)."""
    path = Path(path)
    return path.is_dir() and not (path / "model.safetensors").exists()


def run_checkpoint(path: str | Path) -> Path:
    """The tag folder of a run that init_from names; HFImportError saying what init_from accepts otherwise."""
    from pretrain.checkpoint import CheckpointError, resolve_checkpoint

    try:
        return resolve_checkpoint(path)
    except CheckpointError as err:
        raise HFImportError(f"model.init_from: {str(path)!r} is neither an export folder (no model.safetensors) nor "
                            f"a run of ours ({err})") from None


def run_weights(path: str | Path) -> dict[str, Any]:
    """The model tensors of a run's checkpoint (fp32, consolidated over ZeRO ranks), without `auxiliary.*`."""
    from pretrain.checkpoint import CheckpointError
    from pretrain.consolidate import load_model_state_dict
    from pretrain.state_dicts import without_auxiliary

    tag_dir = run_checkpoint(path)
    try:
        state = load_model_state_dict(tag_dir)
    except CheckpointError as err:
        raise HFImportError(f"model.init_from: {err}") from None
    weights = without_auxiliary(state)
    if len(weights) < len(state):
        log.info("model.init_from: %d tensors of the run's training-only modules (auxiliary.*) left out",
                 len(state) - len(weights))
    log.info("model.init_from: weights of %s", tag_dir)
    return weights


def weights_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise HFImportError(f"model.init_from: no weights at {str(path)!r} (expected an export folder with "
                           "model.safetensors or a .safetensors file)")
    if path.suffix != ".safetensors":
        raise HFImportError(f"model.init_from: {str(path)!r} is not a .safetensors file (nothing pickled is loaded)")
    return path


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file, from its header alone (no tensor is read); None if it is.

    The format is an 8-byte little-endian header length, a JSON header giving each tensor's byte range, then
    the data: a file cut short fails one of the length checks, anything else fails the header."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if len(head) < 8 or length > MAX_HEADER:
            return f"not a safetensors file ({size} bytes; starts {printable(head)})"
        if 8 + length > size:
            return f"truncated: its header needs {8 + length} bytes, the file has {size}"
        raw = fh.read(length)
    try:
        header = json.loads(raw)
        end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"], default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"not a safetensors file (its header is not a tensor table; starts {printable(raw)})"
    if 8 + length + end > size:
        return f"truncated: its tensors need {8 + length + end} bytes, the file has {size}"
    return None


def read_weights(path: Path) -> dict[str, Any]:
    """The tensors of a .safetensors file; HFImportError naming the file when it is truncated or not one."""
    from safetensors.torch import load_file

    if problem := safetensors_problem(path):
        raise HFImportError(f"{path}: {problem}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors' own error type for whatever the header check let through
        raise HFImportError(f"{path}: not a readable safetensors file ({error_text(err)})") from None


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Load an export's (a .safetensors file's, a run's) weights into a freshly built RetinaCLIP.

    Every parameter and buffer must be present with the same shape, and nothing else may be there; the one
    exception is `caption_decoder.*`, loaded when the model has a caption decoder and otherwise skipped with a
    warning (the export has a decoder that this config does not ask for). A run's `auxiliary.*` tensors are
    never loaded (see the module doc); the model must not have auxiliary modules yet."""
    weights = run_weights(path) if is_run_checkpoint(path) else read_weights(weights_file(path))
    own = model.state_dict()
    has_decoder = any(k.startswith(DECODER_PREFIX) for k in own)
    if not has_decoder:
        skipped = [k for k in weights if k.startswith(DECODER_PREFIX)]
        if skipped:
            log.warning("model.init_from: %d caption_decoder tensors skipped (the model has no caption decoder)",
                        len(skipped))
        weights = {k: v for k, v in weights.items() if not k.startswith(DECODER_PREFIX)}
    from pretrain.state_dicts import StateMismatchError, load_state_strict

    try:
        load_state_strict(model, weights, f"model.init_from {str(path)!r}")
    except StateMismatchError as err:
        raise HFImportError(str(err)) from None
