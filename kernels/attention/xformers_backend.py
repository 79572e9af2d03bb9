"""The "xformers" backend: `xformers.ops.memory_efficient_attention` (CUDA only, optional import).

xformers takes (B, L, H, Dh); the (B, H, L, Dh) inputs are passed as transposed views. Causal
without padding uses its `LowerTriangularMask` (top-left aligned, as ours). With padding the mask
becomes an additive float bias: xformers wants its rows 8-element aligned, so it is sliced out of a
buffer whose last dimension is rounded up to a multiple of 8, and expanded (stride 0) over heads.
Fully masked rows are unmasked and zeroed afterwards, as in `kernels.attention.torch_backends`.
"""

from __future__ import annotations

import torch

from kernels.attention.masks import allowed_mask, attended_rows


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                       causal: bool, scale: float) -> torch.Tensor:
    import xformers.ops as xops

    batch, heads, seq_q, _ = q.shape
    seq_k = k.shape[-2]
    qx, kx, vx = (t.transpose(1, 2) for t in (q, k, v))
    if key_padding_mask is None:
        bias = xops.LowerTriangularMask() if causal else None
        return xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias, scale=scale).transpose(1, 2)
    allowed = allowed_mask(key_padding_mask, causal, seq_q, seq_k, q.device)
    empty = ~attended_rows(allowed)
    aligned = -(-seq_k // 8) * 8
    bias = torch.zeros(batch, 1, seq_q, aligned, dtype=q.dtype, device=q.device)[..., :seq_k]
    bias.masked_fill_(~(allowed | empty), float("-inf"))
    out = xops.memory_efficient_attention(qx, kx, vx, attn_bias=bias.expand(batch, heads, seq_q, seq_k), scale=scale)
    return out.transpose(1, 2).masked_fill(empty, 0.0)
