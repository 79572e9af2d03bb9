"""Initialise a freshly built model from an export folder or a .safetensors file (model.init_from).

    load_init_weights(model, "exported/demo")     # strict: every tensor present, same shape, nothing else

Only safetensors are read: nothing pickled is ever loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from shards.printable import error_text, printable

__all__ = ["HFImportError", "load_init_weights", "read_weights", "safetensors_problem", "weights_file"]

log = logging.getLogger("pretrain.init_weights")

DECODER_PREFIX = "caption_decoder."
MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers too


class HFImportError(ValueError):
    """An export folder or weights file that cannot initialise the model."""


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
    """Load an export's (or a .safetensors file's) weights into a freshly built RetinaCLIP.

    Every parameter and buffer must be present with the same shape, and nothing else may be there; the one
    exception is `caption_decoder.*`, loaded when the model has a caption decoder and otherwise skipped with a
    warning (the export has a decoder that this config does not ask for)."""
    weights = read_weights(weights_file(path))
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
