"""The pure-torch backends: "eager" (explicit softmax(QK^T)V, also the float64 test reference) and
"sdpa" (torch.nn.functional.scaled_dot_product_attention).

Both give a fully masked query row (no allowed key) zeros and zero gradients. A plain masked softmax
there is 0/0 = NaN, and so is SDPA's output or gradient depending on its kernel, so such rows are
unmasked (any finite result will do) and their output is then zeroed with `masked_fill`, which
passes no gradient back into the row.

Their varlen forms (`eager_varlen_attention`, `sdpa_varlen_attention`) call the dense op once per packed sequence.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _per_sequence(dense: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A varlen backend from a dense one: one dense call per packed sequence, as (1, H, L, Dh).

    A sequence without keys attends nothing: zeros, with no gradient path (as an empty row of the dense op).
    The offsets are read on the host once per call; this is the reference and CPU path, not a fast one.
    """

    def varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
               scale: float) -> torch.Tensor:
        bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        outs = []
        for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
            if q1 == q0:
                continue
            if k1 == k0:
                outs.append(q.new_zeros(q1 - q0, *q.shape[1:]))
                continue
            seq_q, seq_k, seq_v = (t[a:b].transpose(0, 1)[None] for t, a, b in
                                   ((q, q0, q1), (k, k0, k1), (v, k0, k1)))
            outs.append(dense(seq_q, seq_k, seq_v, None, causal, scale)[0].transpose(0, 1))
        return torch.cat(outs) if outs else q.new_zeros(q.shape)

    varlen.__name__ = f"{dense.__name__.removesuffix('_attention')}_varlen_attention"
    return varlen


eager_varlen_attention = _per_sequence(eager_attention)
sdpa_varlen_attention = _per_sequence(sdpa_attention)
