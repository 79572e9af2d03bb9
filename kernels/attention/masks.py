"""Boolean "may attend" masks for the torch backends (the Triton kernels build theirs per tile).

allowed[b, 0, i, j] = key_padding_mask[b, j] and (j <= i if causal): True where query i may attend
key j. Causal is top-left aligned, as torch SDPA's `is_causal`. A query row with no allowed key is
"fully masked"; every backend outputs zeros there and gives it zero gradients.
"""

from __future__ import annotations

import torch


def allowed_mask(key_padding_mask: torch.Tensor | None, causal: bool, seq_q: int, seq_k: int,
                 device: torch.device) -> torch.Tensor | None:
    """(B or 1, 1, Lq or 1, Lk) bool, broadcastable against (B, H, Lq, Lk); None when nothing is masked."""
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]
    if causal:
        tril = torch.ones(seq_q, seq_k, dtype=torch.bool, device=device).tril()[None, None]
        allowed = tril if allowed is None else allowed & tril
    return allowed


def attended_rows(allowed: torch.Tensor) -> torch.Tensor:
    """(.., Lq or 1, 1) bool: rows with at least one allowed key.

    Not checked on the host (that would sync the GPU every call): callers unmask and zero these rows
    whenever a padding mask is given. Causal alone never empties a row (key 0 is always allowed).
    """
    return allowed.any(dim=-1, keepdim=True)
