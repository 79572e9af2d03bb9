"""`attention_varlen`: attention over sequences packed without padding, in FlashAttention-2's varlen layout.

    cu = torch.tensor([0, 5, 12, 13], dtype=torch.int32)          # three sequences: 5, 7 and 1 tokens
    out = attention_varlen(q, k, v, cu, cu, 7, 7)                 # q, k, v: (13, H, Dh) -> (13, H, Dh)

q: (total_q, H, Dh); k, v: (total_k, H, Dh); cu_seqlens_q / cu_seqlens_k: int32 (n + 1,) row offsets, starting
at 0 and ending at total_q / total_k, so that sequence i is q[cu_q[i]:cu_q[i+1]] attending to
k[cu_k[i]:cu_k[i+1]]. max_seqlen_q / max_seqlen_k bound the lengths (the Triton grid is sized from them).
Sequence i is exactly `attention(q_i, k_i, v_i, causal=causal)` of the dense op: causal is top-left aligned
within each sequence, as the dense op's (FlashAttention-2 >= 2.1 aligns varlen causal masks bottom-right; the
two agree when query and key lengths match, which is self-attention). A zero-length sequence is allowed; a query
sequence whose key sequence is empty outputs zeros with zero gradients.

Backends: "triton" (the FlashAttention-2 kernels of triton_flash with VARLEN=True: one program per (query
block, sequence, head) reading its sequence's rows from cu_seqlens), "sdpa" and "eager" (the dense op once per
sequence; they read the offsets on the host). None picks "sdpa", as the dense op does. "xformers" has no varlen
form here and raises.
"""

from __future__ import annotations

import math

import torch

from kernels.attention.registry import VARLEN_BACKENDS, Problem, resolve_backend, varlen_backend_function


def _check_offsets(name: str, cu: torch.Tensor, total: int, max_seqlen: int, device: torch.device) -> None:
    if cu.dim() != 1 or cu.numel() < 1 or cu.dtype != torch.int32:
        raise ValueError(f"{name} must be a 1-D int32 tensor of n + 1 offsets, got {cu.dtype} {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device}, the inputs on {device}")
    # One host read: a wrong offset would make the kernel read or write another sequence's rows.
    offsets = cu.tolist()
    lengths = [b - a for a, b in zip(offsets, offsets[1:])]
    if offsets[0] != 0 or offsets[-1] != total or min(lengths, default=0) < 0:
        raise ValueError(f"{name} must rise from 0 to {total} (the packed rows), got {offsets}")
    if max(lengths, default=0) > max_seqlen:
        raise ValueError(f"max_seqlen {max_seqlen} is below the longest sequence of {name} ({max(lengths)})")


def check_varlen_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                        cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be packed (total, H, Dh), got shapes {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match: expected "
                         "q (total_q, H, Dh) and k, v (total_k, H, Dh)")
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError(f"q, k, v must share a dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on "
                         f"{q.device}/{k.device}/{v.device}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} and cu_seqlens_k {tuple(cu_seqlens_k.shape)} "
                         "must count the same sequences")
    _check_offsets("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q.device)
    _check_offsets("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q.device)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                     cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, *, causal: bool = False,
                     scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """softmax(scale * q_i k_i^T) v_i per packed sequence i and head; (total_q, H, Dh) in q's dtype."""
    check_varlen_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    problem = Problem(int(max_seqlen_q), int(max_seqlen_k), q.shape[-1], bool(causal), varlen=True)
    name = resolve_backend(backend, q.device, problem)
    if name not in VARLEN_BACKENDS:
        raise RuntimeError(f"attention backend {name!r} has no varlen form; attention_varlen takes one of "
                           f"{VARLEN_BACKENDS}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return varlen_backend_function(name)(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                         bool(causal), scale)


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """int32 (n + 1,) offsets [0, l0, l0 + l1, ...] of sequences of the given lengths."""
    return torch.nn.functional.pad(lengths.to(torch.int32).cumsum(0, dtype=torch.int32), (1, 0))
