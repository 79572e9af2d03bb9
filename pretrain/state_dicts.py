"""Strict state-dict loading with an error that says what does not match (run loading, export, init_from)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

AUXILIARY_PREFIX = "auxiliary."  # training-only modules (pretrain.model.add_auxiliary)
# where runs written before the auxiliary namespace kept the same modules
LEGACY_AUXILIARY_PREFIXES = ("revision_attention.", "momentum_encoder.", "feature_queue.")


def without_auxiliary(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict without the training-only modules (what a released model holds)."""
    return {k: v for k, v in state_dict.items() if not k.startswith((AUXILIARY_PREFIX, *LEGACY_AUXILIARY_PREFIXES))}

__all__ = ["StateMismatchError", "load_state_strict"]


class StateMismatchError(ValueError):
    """A state dict that does not match the model it is loaded into."""


def load_state_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) with a StateMismatchError that lists the mismatching keys and shapes (the one
    strict loader of run loading, export and model.init_from)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs config {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"the config does not match the weights ({what})"]
        for title, items in (("missing in the checkpoint", missing), ("not in the model", unexpected),
                             ("shape mismatch", shapes)):
            if items:
                more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
                lines.append(f"  {title}: {', '.join(items[:8])}{more}")
        raise StateMismatchError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)
