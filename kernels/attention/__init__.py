"""`attention`: multi-head scaled dot-product attention with padding and causal masks, one entry for
every backend.

    out = attention(q, k, v)                                          # (B, H, Lq, Dh)
    out = attention(q, k, v, key_padding_mask=text_mask, causal=True) # decoder self-attention
    out = attention(q, k_img, v_img)                                  # cross-attention, any Lq, Lk

q: (B, H, Lq, Dh); k, v: (B, H, Lk, Dh), one dtype (fp32, bf16, fp16; "eager" also takes fp64) and
device; the output is (B, H, Lq, Dh) in that dtype. key_padding_mask: (B, Lk), True (or nonzero) for
a real key, as a HF attention_mask == 1. causal: query i attends keys j <= i (top-left aligned, as
SDPA's is_causal), combined with the padding mask. scale defaults to 1/sqrt(Dh).

A fully masked query row (no key it may attend) outputs zeros and gets zero gradients on every backend.

Backends: "triton" (FlashAttention-2 kernels of `kernels.attention.triton_flash`; CUDA, or the CPU
interpreter under TRITON_INTERPRET=1; Dh <= 256), "xformers" (memory_efficient_attention; CUDA and an
importable xformers), "sdpa" (torch's scaled_dot_product_attention), "eager" (explicit softmax(QK^T)V;
the test reference in float64). None follows the measured dispatch table (registry.DISPATCH: sdpa
at every measured shape today, each row citing its results file). Asking for a
backend that cannot run raises RuntimeError with the reason; there is no silent fallback.

`attention_varlen` (kernels.attention.varlen) is the same op over sequences packed without padding, in
FlashAttention-2's varlen layout (q (total_q, H, Dh), int32 cu_seqlens).
"""

from __future__ import annotations

import math

import torch

from kernels.attention.registry import BACKENDS, Problem, available_backends, backend_function, resolve_backend
from kernels.attention.varlen import attention_varlen, cu_seqlens_from_lengths


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, L, Dh), got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match: expected "
                         "q (B, H, Lq, Dh) and k, v (B, H, Lk, Dh)")
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must share a dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on "
                         f"{q.device}/{k.device}/{v.device}")
    if key_padding_mask is not None:
        if key_padding_mask.shape != (k.shape[0], k.shape[2]):
            raise ValueError(f"key_padding_mask must be (B, Lk) = {(k.shape[0], k.shape[2])}, "
                             f"got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != k.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device}, the keys on {k.device}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              key_padding_mask: torch.Tensor | None = None, scale: float | None = None,
              backend: str | None = None) -> torch.Tensor:
    """softmax(scale * q k^T, masked) v per (batch, head); see the module doc for shapes and masks."""
    _check_inputs(q, k, v, key_padding_mask)
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        key_padding_mask = key_padding_mask != 0
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    problem = Problem(q.shape[2], k.shape[2], q.shape[3], bool(causal), key_padding_mask is not None)
    name = resolve_backend(backend, q.device, problem)
    return backend_function(name)(q, k, v, key_padding_mask, bool(causal), scale)


__all__ = ["attention", "attention_varlen", "cu_seqlens_from_lengths", "BACKENDS", "available_backends",
           "resolve_backend"]
