"""The pure-torch backends: "eager" (explicit softmax(QK^T)V, also the float64 test reference) and
"sdpa" (torch.nn.functional.scaled_dot_product_attention).

Both give a fully masked query row (no allowed key) zeros and zero gradients. A plain masked softmax
there is 0/0 = NaN, and so is SDPA's output or gradient depending on its kernel, so such rows are
unmasked (any finite result will do) and their output is then zeroed with `masked_fill`, which
passes no gradient back into the row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.attention.masks import allowed_mask, attended_rows


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                    causal: bool, scale: float) -> torch.Tensor:
    """softmax(scale * QK^T + mask) V in the input dtype; the (B, H, Lq, Lk) scores are materialised."""
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    allowed = allowed_mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q.device)
    if allowed is None:
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    scores = scores.masked_fill(~allowed, float("-inf"))
    if key_padding_mask is None:  # causal only: no row is empty
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    empty = ~attended_rows(allowed)
    probs = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return torch.matmul(probs, v)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                   causal: bool, scale: float) -> torch.Tensor:
    """SDPA; without padding the is_causal flag (no mask tensor, so its flash kernel stays eligible)."""
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    allowed = allowed_mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q.device)
    empty = ~attended_rows(allowed)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty, scale=scale)
    return out.masked_fill(empty, 0.0)
