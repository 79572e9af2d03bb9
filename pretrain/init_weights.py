"""Initialise a freshly built model from an export folder or a .safetensors file (model.init_from).

    load_init_weights(model, "exported/demo")     # strict: every tensor present, same shape, nothing else

Only safetensors are read: nothing pickled is ever loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

__all__ = ["HFImportError", "load_init_weights", "weights_file"]

log = logging.getLogger("pretrain.init_weights")

DECODER_PREFIX = "caption_decoder."


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


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Load an export's (or a .safetensors file's) weights into a freshly built RetinaCLIP.

    Every parameter and buffer must be present with the same shape, and nothing else may be there; the one
    exception is `caption_decoder.*`, loaded when the model has a caption decoder and otherwise skipped with a
    warning (the export has a decoder that this config does not ask for)."""
    from safetensors.torch import load_file

    weights = load_file(str(weights_file(path)))
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
