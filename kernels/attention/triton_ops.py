"""Host side of the Triton attention: launch the kernels of kernels.attention.triton_flash (dense, key padding
mask, causal, varlen) and wrap them as autograd functions; `triton_attention` and `triton_varlen_attention` are
what the registry calls."""

from __future__ import annotations

import math

import torch
import triton
from torch.autograd.function import once_differentiable

from kernels.attention.triton_flash import (FP32_INPUT_PRECISION, LOG2E, TRITON_MAX_HEAD_DIM, attn_bwd_dkdv_kernel,
                                            attn_bwd_dq_kernel, attn_fwd_kernel)
from kernels.attention.triton_tuning import dkdv_tuned, dq_tuned, fwd_tuned, pick_kernel
from kernels.triton_common import interpreting

def _head_dim_args(head_dim: int) -> dict:
    if head_dim > TRITON_MAX_HEAD_DIM:
        raise ValueError(f"the triton attention kernels take Dh <= {TRITON_MAX_HEAD_DIM}, got {head_dim}")
    return dict(HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)))


def _precision_args(dtype: torch.dtype) -> dict:
    return dict(FP32_PRECISION=FP32_INPUT_PRECISION, UPCAST=interpreting() and dtype != torch.float32)


def _pad_args(key_padding_mask: torch.Tensor | None, anchor: torch.Tensor) -> tuple[torch.Tensor, int, int, dict]:
    """(pointer, stride_b, stride_n, flags); a bool mask is read through an int8 view (no copy)."""
    if key_padding_mask is None:
        return anchor, 0, 0, dict(HAS_PAD=False)  # never read
    mask = key_padding_mask.view(torch.int8) if key_padding_mask.dtype == torch.bool else key_padding_mask
    return mask, mask.stride(0), mask.stride(1), dict(HAS_PAD=True)


def _default_scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                      causal: bool = False, scale: float | None = None, *, out: torch.Tensor | None = None,
                      lse: torch.Tensor | None = None, block_m: int | None = None, block_n: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Lq, Dh) in q's dtype, lse (B, H, Lq) fp32, base 2 (log2 of sum exp2(s * log2 e)),
    -inf on empty rows).

    q, k, v share a dtype (fp32, bf16, fp16) and any strides; the optional outputs are written in place.
    """
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    dims = _head_dim_args(head_dim)
    scale = _default_scale(scale, head_dim)
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty(batch, heads, seq_q, dtype=torch.float32, device=q.device) if lse is None else lse
    if out.numel() == 0:
        return out, lse
    assert lse.is_contiguous() and lse.shape == (batch, heads, seq_q), "lse must be a contiguous (B, H, Lq) buffer"
    pad, stride_pb, stride_pn, flags = _pad_args(key_padding_mask, q)
    kernel, opts = pick_kernel(attn_fwd_kernel, fwd_tuned, block_m, block_n)
    grid = lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
    kernel[grid](
        q, k, v, pad, out, lse, q, q,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), stride_pb, stride_pn, *lse.stride()[:2],
        heads, seq_q, seq_k, scale * LOG2E,
        **dims, CAUSAL=bool(causal), **flags, VARLEN=False, **_precision_args(q.dtype), **opts)
    return out, lse


def attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, key_padding_mask: torch.Tensor | None = None, causal: bool = False,
                       scale: float | None = None, *, dq: torch.Tensor | None = None, dk: torch.Tensor | None = None,
                       dv: torch.Tensor | None = None, delta: torch.Tensor | None = None,
                       block_m: int | None = None, block_n: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the inputs' dtype from the upstream grad `do` and the forward's `out`, `lse`.

    `delta` is the fp32 (B, H, Lq) scratch buffer of <do_i, o_i> (the dq kernel fills it for the dk/dv kernel);
    the optional outputs are written in place.
    """
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    dims = _head_dim_args(head_dim)
    scale = _default_scale(scale, head_dim)
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    delta = torch.empty(batch, heads, seq_q, dtype=torch.float32, device=q.device) if delta is None else delta
    if dq.numel() == 0 or dk.numel() == 0:  # no queries or no keys: nothing is attended
        for grad in (dq, dk, dv):
            grad.zero_()
        return dq, dk, dv
    pad, stride_pb, stride_pn, flags = _pad_args(key_padding_mask, q)
    prec = _precision_args(q.dtype)
    common = (heads, seq_q, seq_k, scale, scale * LOG2E)

    assert lse.is_contiguous() and delta.is_contiguous(), "lse and delta must be contiguous (B, H, Lq) buffers"
    lse_strides = lse.stride()[:2]
    # dq first: it stores delta, which the dk/dv kernel reads (same stream, so it is there)
    kernel, opts = pick_kernel(attn_bwd_dq_kernel, dq_tuned, block_m, block_n)
    grid = lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
    kernel[grid](
        q, k, v, pad, out, do, lse, delta, dq, q, q,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *do.stride(), *dq.stride(), stride_pb, stride_pn,
        *lse_strides, *common, **dims, CAUSAL=bool(causal), **flags, VARLEN=False, **prec, **opts)

    kernel, opts = pick_kernel(attn_bwd_dkdv_kernel, dkdv_tuned, block_m, block_n)
    grid = lambda meta: (triton.cdiv(seq_k, meta["BLOCK_N"]), batch * heads)  # noqa: E731
    kernel[grid](
        q, k, v, pad, do, lse, delta, dk, dv, q, q,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(), stride_pb, stride_pn,
        *lse_strides, *common, **dims, CAUSAL=bool(causal), **flags, VARLEN=False, **prec, **opts)
    return dq, dk, dv


def _varlen_grid_bound(max_seqlen: int) -> int:
    """The grid's per-sequence extent (and the autotuner's key): max_seqlen rounded up to a power of two, so
    batches whose longest caption differs do not each trigger a new tuning; extra blocks exit at once."""
    return triton.next_power_of_2(max(int(max_seqlen), 1))


def _packed_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(batch, head, row, dim) strides of a packed (total, H, Dh) tensor: the batch stride is 0, each
    program moves to its sequence's rows through cu_seqlens."""
    return 0, t.stride(1), t.stride(0), t.stride(2)


def varlen_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                   cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool = False,
                   scale: float | None = None, *, block_m: int | None = None, block_n: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (total_q, H, Dh) in q's dtype, lse (H, total_q) fp32, base 2) of packed sequences.

    q: (total_q, H, Dh), k, v: (total_k, H, Dh); cu_seqlens_*: int32 (n + 1,) row offsets of the n sequences
    (kernels.attention.varlen checks them); causal is top-left aligned within each sequence.
    """
    total_q, heads, head_dim = q.shape
    dims = _head_dim_args(head_dim)
    scale = _default_scale(scale, head_dim)
    out = torch.empty_like(q)
    lse = torch.empty(heads, total_q, dtype=torch.float32, device=q.device)
    n_seq = cu_seqlens_q.numel() - 1
    if total_q == 0 or n_seq == 0:
        return out, lse
    bound_q, bound_k = _varlen_grid_bound(max_seqlen_q), _varlen_grid_bound(max_seqlen_k)
    kernel, opts = pick_kernel(attn_fwd_kernel, fwd_tuned, block_m, block_n)
    grid = lambda meta: (triton.cdiv(bound_q, meta["BLOCK_M"]), n_seq * heads)  # noqa: E731
    kernel[grid](
        q, k, v, q, out, lse, cu_seqlens_q, cu_seqlens_k,
        *_packed_strides(q), *_packed_strides(k), *_packed_strides(v), *_packed_strides(out), 0, 0,
        0, lse.stride(0), heads, bound_q, bound_k, scale * LOG2E,
        **dims, CAUSAL=bool(causal), HAS_PAD=False, VARLEN=True, **_precision_args(q.dtype), **opts)
    return out, lse


def varlen_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int,
                    max_seqlen_k: int, causal: bool = False, scale: float | None = None, *,
                    block_m: int | None = None, block_n: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of packed sequences from the upstream grad `do` and the forward's `out`, `lse`."""
    total_q, heads, head_dim = q.shape
    dims = _head_dim_args(head_dim)
    scale = _default_scale(scale, head_dim)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    n_seq = cu_seqlens_q.numel() - 1
    if total_q == 0 or k.shape[0] == 0 or n_seq == 0:  # nothing is attended
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    bound_q, bound_k = _varlen_grid_bound(max_seqlen_q), _varlen_grid_bound(max_seqlen_k)
    prec = _precision_args(q.dtype)
    common = (0, lse.stride(0), heads, bound_q, bound_k, scale, scale * LOG2E)
    flags = dict(CAUSAL=bool(causal), HAS_PAD=False, VARLEN=True)

    kernel, opts = pick_kernel(attn_bwd_dq_kernel, dq_tuned, block_m, block_n)  # first: it stores delta
    grid = lambda meta: (triton.cdiv(bound_q, meta["BLOCK_M"]), n_seq * heads)  # noqa: E731
    kernel[grid](
        q, k, v, q, out, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k,
        *_packed_strides(q), *_packed_strides(k), *_packed_strides(v), *_packed_strides(out), *_packed_strides(do),
        *_packed_strides(dq), 0, 0, *common, **dims, **flags, **prec, **opts)

    kernel, opts = pick_kernel(attn_bwd_dkdv_kernel, dkdv_tuned, block_m, block_n)
    grid = lambda meta: (triton.cdiv(bound_k, meta["BLOCK_N"]), n_seq * heads)  # noqa: E731
    kernel[grid](
        q, k, v, q, do, lse, delta, dk, dv, cu_seqlens_q, cu_seqlens_k,
        *_packed_strides(q), *_packed_strides(k), *_packed_strides(v), *_packed_strides(do),
        *_packed_strides(dk), *_packed_strides(dv), 0, 0, *common, **dims, **flags, **prec, **opts)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------ autograd


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1 and dtypes <= {torch.float32, torch.bfloat16, torch.float16}:
        return dtypes.pop()
    return torch.float32  # mixed or fp64 inputs: compute in fp32, return in each input's dtype


def _prepare(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = t.to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()  # unit stride along Dh for vectorised tile loads


class TritonAttention(torch.autograd.Function):
    """softmax(scale * QK^T + masks) V with the masks of the module doc; no gradient for the mask."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, scale):
        dtype = _compute_dtype(q, k, v)
        qc, kc, vc = (_prepare(t, dtype) for t in (q, k, v))
        out, lse = attention_forward(qc, kc, vc, key_padding_mask, causal, scale)
        ctx.save_for_backward(qc, kc, vc, out, lse, key_padding_mask)
        ctx.extras = (causal, scale, q.dtype, k.dtype, v.dtype)
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        qc, kc, vc, out, lse, key_padding_mask = ctx.saved_tensors
        causal, scale, q_dtype, k_dtype, v_dtype = ctx.extras
        dq, dk, dv = attention_backward(_prepare(do, qc.dtype), qc, kc, vc, out, lse, key_padding_mask, causal, scale)
        return dq.to(q_dtype), dk.to(k_dtype), dv.to(v_dtype), None, None, None


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
                     causal: bool, scale: float) -> torch.Tensor:
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError("the triton attention kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "this module is imported (CPU testing)")
    return TritonAttention.apply(q, k, v, key_padding_mask, bool(causal), float(scale))


class TritonVarlenAttention(torch.autograd.Function):
    """attention_varlen over packed sequences (no padding); no gradient for the offsets."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
        dtype = _compute_dtype(q, k, v)
        qc, kc, vc = (_prepare(t, dtype) for t in (q, k, v))
        lengths = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        out, lse = varlen_forward(qc, kc, vc, *lengths, causal, scale)
        ctx.save_for_backward(qc, kc, vc, out, lse, cu_seqlens_q, cu_seqlens_k)
        ctx.extras = (max_seqlen_q, max_seqlen_k, causal, scale, q.dtype, k.dtype, v.dtype)
        return out.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        qc, kc, vc, out, lse, cu_q, cu_k = ctx.saved_tensors
        max_q, max_k, causal, scale, q_dtype, k_dtype, v_dtype = ctx.extras
        dq, dk, dv = varlen_backward(_prepare(do, qc.dtype), qc, kc, vc, out, lse, cu_q, cu_k, max_q, max_k, causal,
                                     scale)
        return dq.to(q_dtype), dk.to(k_dtype), dv.to(v_dtype), None, None, None, None, None, None


def triton_varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                            cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                            scale: float) -> torch.Tensor:
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError("the triton attention kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "this module is imported (CPU testing)")
    return TritonVarlenAttention.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                       bool(causal), float(scale))


__all__ = ["TritonAttention", "TritonVarlenAttention", "triton_attention", "triton_varlen_attention",
           "attention_forward", "attention_backward", "varlen_forward", "varlen_backward"]
