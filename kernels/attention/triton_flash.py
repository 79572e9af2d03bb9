"""FlashAttention-2 style Triton kernels (the `backend="triton"` of `kernels.attention.attention`).

Per (batch, head), queries q_i and keys/values k_j, v_j (rows of Dh), with the allowed keys
A_i = {j < Lk : key_padding_mask[j] and (j <= i if causal)}:

    s_ij  = scale * <q_i, k_j>                         (j in A_i)
    lse_i = log sum_{j in A_i} exp(s_ij)               (-inf when A_i is empty)
    p_ij  = exp(s_ij - lse_i),   o_i = sum_j p_ij v_j  (o_i = 0 when A_i is empty)

Backward, with delta_i = <do_i, o_i> (= sum_j p_ij <do_i, v_j>):

    dv_j  = sum_i p_ij do_i
    ds_ij = p_ij (<do_i, v_j> - delta_i)
    dq_i  = scale * sum_j ds_ij k_j         dk_j = scale * sum_i ds_ij q_i

Nothing Lq x Lk is stored. The forward sweeps key blocks with an online softmax (running max m_i and
sum l_i) and saves lse_i. The backward recomputes p from q, k and lse_i twice: once per query block
(dq; loop over key blocks) and once per key block (dk, dv; loop over query blocks), so there are no
atomics. Causal programs skip the key blocks above the diagonal (dk/dv programs: the query blocks
before it).

Base 2 throughout: exp2 is the native instruction, so scale * log2(e) is folded once into the operand
each program holds for its whole loop (q in the forward and dq kernels, k in the dk/dv kernel), the
dots then give s_ij * log2(e) directly, and lse is saved in base 2 (lse2_i = lse_i * log2(e)) for the
backward to use as it is. For 16-bit inputs the scaled operand is rounded to the input dtype (one more
rounding of q or k, relative 2^-9 in bf16), as FlashAttention's Triton tutorial did; fp32 is exact to
one fp32 rounding.

Masks only on boundary tiles: each key loop is split into the tiles that need no mask (inside the
sequence and, causal, wholly at or below the diagonal) and the few that do (the diagonal ones, the
sequence end); the full tiles load without bounds checks and skip the where(). A key padding mask is
a per-key vector, so full tiles still apply it when there is one (one (BLOCK_N,) load per tile). The
dk/dv kernel needs even less: a key row's dk_j, dv_j depend on that key alone, so padded keys and keys
past the end are zeroed once at the store instead of masked in every tile; only the causal diagonal and
the query tail (rows past Lq load as zeros with lse +inf, so their p is 0) are boundary tiles there.

An empty row (every key masked) keeps m_i = -inf: its exponentials are shifted by 0 instead, so no
(-inf) - (-inf) = NaN appears; l_i stays 0, o_i is stored as 0 and lse_i as -inf. The backward reads
that lse as +inf, so every p_ij of the row, hence every gradient it contributes, is 0.

Two backward launches, no preprocess: the dq kernel runs first, computes delta_i = <do_i, o_i> for its
own query block in its prologue (it holds do_i anyway), uses it and stores it; the dk/dv kernel, launched
after it on the same stream, reads it. That keeps delta computed once per row (the dk/dv kernel
recomputing it would load every o tile once per key block) and drops the third launch, whose fixed
cost dominated at short sequences.

Not used, and why: tensor descriptors (TMA). The pinned Triton has `tl.make_tensor_descriptor` and its
interpreter runs them, but a descriptor needs 16-byte aligned strides, which the strided inputs these
kernels accept do not always have (a fused-qkv view, Dh = 20 in 16 bits), and device-side descriptors
need a scratch allocator (`triton.set_allocator`): a second load path with its own fallback, worth adding
only once a GPU run shows the loads are the limit. Warp specialisation: `tl.range(..., warp_specialize=True)`
is documented in the pinned Triton as Blackwell-only, so there is no Hopper switch to turn on.

Dh of 16, 32, 64, 128 are native tiles; any other Dh <= 256 runs in a tile padded to the next power
of two >= 16 (the extra columns load as zeros and are never stored, so nothing is copied). Dots
accumulate in fp32 for every input dtype (fp32, bf16, fp16); p and ds are rounded to the input dtype
before their dots, as FlashAttention does. Outputs are written in the input dtype, lse in fp32.

Varlen (VARLEN=True, `kernels.attention.attention_varlen`): the same kernels over sequences packed without
padding, q (total_q, H, Dh), k, v (total_k, H, Dh). The grid's second axis is (sequence, head); each program
reads its sequence's first row and length from cu_seqlens and offsets its pointers, so the per-tile maths
above is unchanged. The first axis covers max_seqlen rounded up to a power of two (also the autotune key, so
batches with different longest captions share a tuning); blocks past their own sequence's end skip their
loops, and their masked stores write nothing. lse and delta are (H, total_q).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels.triton_common import interpreting
from kernels.triton_common import mm

TRITON_MAX_HEAD_DIM = 256

# fp32 inputs use exact fp32 products; "tf32" is the faster candidate to benchmark on a GPU.
FP32_INPUT_PRECISION = "ieee"
LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------- helpers


@triton.jit
def _load_rows(ptr, offs_r, offs_d, stride_r, stride_d, n_rows, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """(rows, BLOCK_D) tile, zeros outside; rows are bounds-checked only on boundary tiles, columns only
    when the head dim is padded."""
    ptrs = ptr + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d
    if CHECK_ROWS:
        tile = tl.load(ptrs, mask=(offs_r < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    elif BLOCK_D != HEAD_DIM:
        tile = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _key_valid(offs_n, seq_k, pad_ptr, stride_pn, HAS_PAD: tl.constexpr):
    """(BLOCK_N,) bool: in range and, with a padding mask, a real token."""
    valid = offs_n < seq_k
    if HAS_PAD:
        valid = valid & (tl.load(pad_ptr + offs_n * stride_pn, mask=valid, other=0) != 0)
    return valid


@triton.jit
def _sequence(cu_ptr, b):
    """(start row, length) of sequence b in a packed varlen tensor, from its cumulative lengths."""
    start = tl.load(cu_ptr + b)
    return start.to(tl.int64), tl.load(cu_ptr + b + 1) - start


@triton.jit
def _backward_lse2(lse_ptr, offs_m, seq_q, CHECK_ROWS: tl.constexpr):
    # the saved base-2 lse; -inf (empty rows) and rows past Lq become +inf, so their p is 0
    if CHECK_ROWS:
        lse = tl.load(lse_ptr + offs_m, mask=offs_m < seq_q, other=float("-inf"))
    else:
        lse = tl.load(lse_ptr + offs_m)
    return tl.where(lse == float("-inf"), float("inf"), lse)


@triton.jit
def _scaled(x, qk_scale):
    """x * scale * log2(e) in x's dtype: the one operand of s that carries the softmax scale."""
    return (x.to(tl.float32) * qk_scale).to(x.dtype)


# ----------------------------------------------------------------------------------------- forward


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_ptr, v_ptr, pad_ptr, offs_m, offs_d, start, end, seq_k,
               stride_kn, stride_kd, stride_vn, stride_vd, stride_pn,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """The online softmax over key blocks [start, end); MASKED: boundary tiles (sequence end, causal diagonal)."""
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr, offs_n, offs_d, stride_kn, stride_kd, seq_k, MASKED, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_ptr, offs_n, offs_d, stride_vn, stride_vd, seq_k, MASKED, HEAD_DIM, BLOCK_D)
        s = mm(q, tl.trans(k), FP32_PRECISION, UPCAST)  # base 2 already: q carries scale * log2(e)
        if MASKED:
            allowed = _key_valid(offs_n, seq_k, pad_ptr, stride_pn, HAS_PAD)[None, :]
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(allowed, s, float("-inf"))
        elif HAS_PAD:
            s = tl.where((tl.load(pad_ptr + offs_n * stride_pn) != 0)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED or HAS_PAD:  # a row may have no key yet: shift by 0, not -inf
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:  # every row has a real key in a full unpadded tile, so m_new is finite
            m_shift = m_new
        p = tl.exp2(s - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + mm(p.to(v.dtype), v, FP32_PRECISION, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, pad_ptr, out_ptr, lse_ptr, cu_q_ptr, cu_k_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_pb, stride_pn, stride_lb, stride_lh,
    num_heads, seq_q, seq_k, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, VARLEN: tl.constexpr, FP32_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + h * stride_kh
    v_ptr += b * stride_vb + h * stride_vh
    out_ptr += b * stride_ob + h * stride_oh
    pad_ptr += b * stride_pb
    lse_ptr += b * stride_lb + h * stride_lh
    if VARLEN:  # sequence b's rows of the packed tensors; seq_q, seq_k were only the grid's bounds
        q_start, seq_q = _sequence(cu_q_ptr, b)
        k_start, seq_k = _sequence(cu_k_ptr, b)
        q_ptr += q_start * stride_qm
        out_ptr += q_start * stride_om
        lse_ptr += q_start
        k_ptr += k_start * stride_kn
        v_ptr += k_start * stride_vn

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _scaled(_load_rows(q_ptr, offs_m, offs_d, stride_qm, stride_qd, seq_q, True, HEAD_DIM, BLOCK_D), qk_scale)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of s * log2(e)
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp2(s * log2(e) - m_i)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    # keys [0, full) are whole tiles that no row masks: inside the keys and, causal, at or left of this
    # block's first query; [full, hi) are the boundary tiles (causal: keys past the last query are skipped)
    hi = seq_k
    full = seq_k
    if CAUSAL:
        hi = tl.minimum(seq_k, start_m + BLOCK_M)
        full = tl.minimum(seq_k, start_m + 1)
    full = (full // BLOCK_N) * BLOCK_N
    if VARLEN:  # a block past this sequence's end (the grid covers the longest one) has nothing to do
        hi = tl.where(start_m < seq_q, hi, 0)
        full = tl.where(start_m < seq_q, full, 0)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptr, v_ptr, pad_ptr, offs_m, offs_d, 0, full, seq_k,
                               stride_kn, stride_kd, stride_vn, stride_vd, stride_pn,
                               HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, HAS_PAD, FP32_PRECISION, UPCAST)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_ptr, v_ptr, pad_ptr, offs_m, offs_d, full, hi, seq_k,
                               stride_kn, stride_kd, stride_vn, stride_vd, stride_pn,
                               HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, HAS_PAD, FP32_PRECISION, UPCAST)

    empty = l_i == 0.0  # a non-empty row has l_i >= 1 (its max contributes exp2(0))
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse2 = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    mask_m = offs_m < seq_q
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_d < HEAD_DIM)[None, :])
    tl.store(lse_ptr + offs_m, lse2, mask=mask_m)


# ---------------------------------------------------------------------------------------- backward


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, k_ptr, v_ptr, pad_ptr, offs_m, offs_d, start, end, seq_k,
              stride_kn, stride_kd, stride_vn, stride_vd, stride_pn,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """dq over key blocks [start, end) (q already scaled); MASKED: the boundary tiles."""
    for start_n in range(start, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr, offs_n, offs_d, stride_kn, stride_kd, seq_k, MASKED, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_ptr, offs_n, offs_d, stride_vn, stride_vd, seq_k, MASKED, HEAD_DIM, BLOCK_D)
        p = tl.exp2(mm(q, tl.trans(k), FP32_PRECISION, UPCAST) - lse2[:, None])
        if MASKED:
            allowed = _key_valid(offs_n, seq_k, pad_ptr, stride_pn, HAS_PAD)[None, :]
            if CAUSAL:
                allowed = allowed & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(allowed, p, 0.0)
        elif HAS_PAD:
            p = tl.where((tl.load(pad_ptr + offs_n * stride_pn) != 0)[None, :], p, 0.0)
        dp = mm(do, tl.trans(v), FP32_PRECISION, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += mm(ds.to(k.dtype), k, FP32_PRECISION, UPCAST)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, pad_ptr, out_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_q_ptr, cu_k_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_pb, stride_pn, stride_lb, stride_lh,
    num_heads, seq_q, seq_k, scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, VARLEN: tl.constexpr, FP32_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # one program per query block; runs before the dk/dv kernel and stores delta for it
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + h * stride_kh
    v_ptr += b * stride_vb + h * stride_vh
    out_ptr += b * stride_ob + h * stride_oh
    do_ptr += b * stride_gb + h * stride_gh
    dq_ptr += b * stride_dqb + h * stride_dqh
    pad_ptr += b * stride_pb
    lse_ptr += b * stride_lb + h * stride_lh
    delta_ptr += b * stride_lb + h * stride_lh
    if VARLEN:
        q_start, seq_q = _sequence(cu_q_ptr, b)
        k_start, seq_k = _sequence(cu_k_ptr, b)
        q_ptr += q_start * stride_qm
        out_ptr += q_start * stride_om
        do_ptr += q_start * stride_gm
        dq_ptr += q_start * stride_dqm
        lse_ptr += q_start
        delta_ptr += q_start
        k_ptr += k_start * stride_kn
        v_ptr += k_start * stride_vn

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seq_q
    do = _load_rows(do_ptr, offs_m, offs_d, stride_gm, stride_gd, seq_q, True, HEAD_DIM, BLOCK_D)
    o = _load_rows(out_ptr, offs_m, offs_d, stride_om, stride_od, seq_q, True, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + offs_m, delta, mask=mask_m)
    q = _scaled(_load_rows(q_ptr, offs_m, offs_d, stride_qm, stride_qd, seq_q, True, HEAD_DIM, BLOCK_D), qk_scale)
    lse2 = _backward_lse2(lse_ptr, offs_m, seq_q, True)

    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    hi = seq_k  # the forward's split of the key loop
    full = seq_k
    if CAUSAL:
        hi = tl.minimum(seq_k, start_m + BLOCK_M)
        full = tl.minimum(seq_k, start_m + 1)
    full = (full // BLOCK_N) * BLOCK_N
    if VARLEN:
        hi = tl.where(start_m < seq_q, hi, 0)
        full = tl.where(start_m < seq_q, full, 0)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_ptr, v_ptr, pad_ptr, offs_m, offs_d, 0, full, seq_k,
                   stride_kn, stride_kd, stride_vn, stride_vd, stride_pn,
                   HEAD_DIM, BLOCK_D, BLOCK_N, False, CAUSAL, HAS_PAD, FP32_PRECISION, UPCAST)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_ptr, v_ptr, pad_ptr, offs_m, offs_d, full, hi, seq_k,
                   stride_kn, stride_kd, stride_vn, stride_vd, stride_pn,
                   HEAD_DIM, BLOCK_D, BLOCK_N, True, CAUSAL, HAS_PAD, FP32_PRECISION, UPCAST)
    tl.store(dq_ptr + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, offs_n, offs_d, start, end, seq_q,
                stride_qm, stride_qd, stride_gm, stride_gd,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                CAUSAL: tl.constexpr, FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """dk, dv over query blocks [start, end) (k already scaled); tiles are (keys, queries), so both
    accumulate from plain dots. MASKED: the causal diagonal and the query tail."""
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_ptr, offs_m, offs_d, stride_qm, stride_qd, seq_q, MASKED, HEAD_DIM, BLOCK_D)
        do = _load_rows(do_ptr, offs_m, offs_d, stride_gm, stride_gd, seq_q, MASKED, HEAD_DIM, BLOCK_D)
        lse2 = _backward_lse2(lse_ptr, offs_m, seq_q, MASKED)
        if MASKED:
            delta = tl.load(delta_ptr + offs_m, mask=offs_m < seq_q, other=0.0)
        else:
            delta = tl.load(delta_ptr + offs_m)
        p_t = tl.exp2(mm(k, tl.trans(q), FP32_PRECISION, UPCAST) - lse2[None, :])
        if MASKED and CAUSAL:
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :], p_t, 0.0)
        dv += mm(p_t.to(do.dtype), do, FP32_PRECISION, UPCAST)
        ds_t = p_t * (mm(v, tl.trans(do), FP32_PRECISION, UPCAST) - delta[None, :])
        dk += mm(ds_t.to(q.dtype), q, FP32_PRECISION, UPCAST)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, pad_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_gb, stride_gh, stride_gm, stride_gd,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_pb, stride_pn, stride_lb, stride_lh,
    num_heads, seq_q, seq_k, scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, VARLEN: tl.constexpr, FP32_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # one program per key block; reads the delta the dq kernel stored
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    q_ptr += b * stride_qb + h * stride_qh
    k_ptr += b * stride_kb + h * stride_kh
    v_ptr += b * stride_vb + h * stride_vh
    do_ptr += b * stride_gb + h * stride_gh
    dk_ptr += b * stride_dkb + h * stride_dkh
    dv_ptr += b * stride_dvb + h * stride_dvh
    pad_ptr += b * stride_pb
    lse_ptr += b * stride_lb + h * stride_lh
    delta_ptr += b * stride_lb + h * stride_lh
    if VARLEN:
        q_start, seq_q = _sequence(cu_q_ptr, b)
        k_start, seq_k = _sequence(cu_k_ptr, b)
        q_ptr += q_start * stride_qm
        do_ptr += q_start * stride_gm
        lse_ptr += q_start
        delta_ptr += q_start
        k_ptr += k_start * stride_kn
        v_ptr += k_start * stride_vn
        dk_ptr += k_start * stride_dkn
        dv_ptr += k_start * stride_dvn

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _scaled(_load_rows(k_ptr, offs_n, offs_d, stride_kn, stride_kd, seq_k, True, HEAD_DIM, BLOCK_D), qk_scale)
    v = _load_rows(v_ptr, offs_n, offs_d, stride_vn, stride_vd, seq_k, True, HEAD_DIM, BLOCK_D)

    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    # query blocks [lo, diag) cross the causal diagonal (queries before this block's last key), [diag, full)
    # are whole unmasked tiles, [full, hi) the query tail
    lo = 0
    hi = seq_q
    if VARLEN:  # a key block past this sequence's end has nothing to do
        hi = tl.where(start_n < seq_k, hi, 0)
    diag = lo
    if CAUSAL:  # queries before this key block never see it: start at the block holding query start_n
        lo = (start_n // BLOCK_M) * BLOCK_M
        diag = tl.minimum(tl.cdiv(start_n + BLOCK_N - 1, BLOCK_M) * BLOCK_M, hi)
    full = tl.maximum(diag, (hi // BLOCK_M) * BLOCK_M)
    dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, offs_n, offs_d, lo, diag, seq_q,
                         stride_qm, stride_qd, stride_gm, stride_gd,
                         HEAD_DIM, BLOCK_D, BLOCK_M, True, CAUSAL, FP32_PRECISION, UPCAST)
    dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, offs_n, offs_d, diag, full, seq_q,
                         stride_qm, stride_qd, stride_gm, stride_gd,
                         HEAD_DIM, BLOCK_D, BLOCK_M, False, CAUSAL, FP32_PRECISION, UPCAST)
    dk, dv = _dkdv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, offs_n, offs_d, full, hi, seq_q,
                         stride_qm, stride_qd, stride_gm, stride_gd,
                         HEAD_DIM, BLOCK_D, BLOCK_M, True, CAUSAL, FP32_PRECISION, UPCAST)

    # padded keys and keys past the end: rows of their own, zeroed here rather than masked in every tile
    valid = _key_valid(offs_n, seq_k, pad_ptr, stride_pn, HAS_PAD)[:, None]
    tile = (offs_n < seq_k)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(dk_ptr + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             tl.where(valid, dk * scale, 0.0).to(dk_ptr.dtype.element_ty), mask=tile)
    tl.store(dv_ptr + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd,
             tl.where(valid, dv, 0.0).to(dv_ptr.dtype.element_ty), mask=tile)


# --------------------------------------------------------------------------------------- autotuning


# The autotune space, pruned with the sm_90a resource report (`retina-bench resources --families attention`,
# benchmarks/results/attention-resources-sm90.json): only tiles that compile without register spills for the
# heaviest variant (causal + key padding mask) are listed, so no spilling configuration is ever tried and
# tuning compiles a few configs instead of 16. Keys: (kernel, fp32?, BLOCK_D); values: (program block, looped
# block, num_warps, num_stages), the program block being BLOCK_M for "fwd" and "dq", BLOCK_N for "dkdv".
# Why these: 16-bit tiles of 128 rows spill at 4 warps (the fp32 accumulators of one 128 x Dh tile alone
# take 128 registers a thread at Dh = 128), so 128-row tiles use 8 warps; fp32 operands take twice the
# registers of 16-bit ones and run on FMA units (no wgmma), so fp32 gets its own small tiles at 8 warps, and
# at Dh = 128 the dk/dv kernel (which holds k, v, dk, dv) fits only 32 x 16 and 16 x 32. Entries within 16
# registers of the 255 cap are left out too (e.g. 16-bit Dh = 128: dq 128 x 64, dk/dv 128 x 32 and 64 x 64 at
# 254-255): an older Triton (the GPU machine's) or ptxas may allocate a few more and spill. The 16-wide
# head-dim tile shares the rows of 32 and 64 (it needs fewer registers than either); Dh 129..256 get one
# small config each. tests/kernels/test_resources.py compiles every entry for Dh 32, 64, 128 and asserts
# no spills and at most 240 registers.
_16BIT_FWD = ((128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 2), (64, 32, 4, 3))
_16BIT_DQ = ((128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3))
TUNE_SPACE = {
    **{(kernel, False, d): space for d in (16, 32, 64)
       for kernel, space in (("fwd", _16BIT_FWD), ("dq", _16BIT_DQ),
                             ("dkdv", ((128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 2))))},
    ("fwd", False, 128): ((128, 64, 8, 2), (128, 32, 8, 3), (64, 32, 4, 3)),
    ("dq", False, 128): ((128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 4, 3)),
    ("dkdv", False, 128): ((64, 32, 8, 2), (64, 32, 8, 3), (32, 64, 8, 2)),
    ("fwd", False, 256): ((64, 32, 8, 2),),
    ("dq", False, 256): ((64, 32, 8, 2),),
    ("dkdv", False, 256): ((32, 32, 8, 2),),
    **{(kernel, True, d): space for d in (16, 32, 64)
       for kernel, space in (("fwd", ((64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 8, 2))),
                             ("dq", ((64, 32, 8, 2), (64, 16, 8, 2), (32, 32, 8, 2))),
                             ("dkdv", ((32, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2))))},
    ("fwd", True, 128): ((32, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2)),
    ("dq", True, 128): ((32, 32, 8, 2), (64, 16, 8, 2), (32, 16, 8, 2)),
    ("dkdv", True, 128): ((32, 16, 8, 2), (16, 32, 8, 2)),
    ("fwd", True, 256): ((32, 16, 8, 2),),
    ("dq", True, 256): ((32, 16, 8, 2),),
    ("dkdv", True, 256): ((16, 16, 8, 2),),
}
_BLOCKS = {"fwd": ("BLOCK_M", "BLOCK_N"), "dq": ("BLOCK_M", "BLOCK_N"), "dkdv": ("BLOCK_N", "BLOCK_M")}


def _config(kernel: str, entry: tuple[int, int, int, int]) -> triton.Config:
    outer, inner = _BLOCKS[kernel]
    return triton.Config({outer: entry[0], inner: entry[1]}, num_warps=entry[2], num_stages=entry[3])


def tune_configs(kernel: str, fp32: bool, block_d: int) -> list[triton.Config]:
    """The configurations the autotuner tries for one kernel, input dtype class and head-dim tile."""
    return [_config(kernel, entry) for entry in TUNE_SPACE[(kernel, fp32, block_d)]]


def _config_id(config: triton.Config) -> tuple:
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages


def _autotuned(kernel: str, fn):
    """fn autotuned over the union of its table entries; each launch keeps only its own (dtype, BLOCK_D) row."""
    union = {_config_id(c): c for (name, _, _), entries in TUNE_SPACE.items() if name == kernel
             for c in (_config(kernel, e) for e in entries)}

    def prune(configs, named_args, **kwargs):
        fp32 = named_args["q_ptr"].dtype == torch.float32
        wanted = {_config_id(c) for c in tune_configs(kernel, fp32, kwargs["BLOCK_D"])}
        return [c for c in configs if _config_id(c) in wanted]

    return triton.autotune(list(union.values()), key=_TUNE_KEY, prune_configs_by={"early_config_prune": prune})(fn)


# Tuned per problem shape and mask kind (the tensor dtypes are part of triton's key already). Every
# kernel only stores its outputs (the dq kernel's delta included), so the autotuner's repeated runs need no reset.
_TUNE_KEY = ["seq_q", "seq_k", "HEAD_DIM", "CAUSAL", "HAS_PAD", "VARLEN"]
if interpreting():  # autotuning would run every config in the interpreter: fixed 16 x 16 tiles instead
    _fwd_tuned = _dkdv_tuned = _dq_tuned = None
else:
    _fwd_tuned = _autotuned("fwd", _attn_fwd_kernel)
    _dkdv_tuned = _autotuned("dkdv", _attn_bwd_dkdv_kernel)
    _dq_tuned = _autotuned("dq", _attn_bwd_dq_kernel)


def _kernel(plain, tuned, block_m: int | None, block_n: int | None):
    """(kernel, launch options): the smallest tl.dot tiles (16) in the interpreter; on a GPU the
    autotuned kernel unless the caller forces block sizes (tests, benchmarks)."""
    if tuned is None:
        return plain, dict(BLOCK_M=block_m or 16, BLOCK_N=block_n or 16)
    if block_m is not None or block_n is not None:
        return plain, dict(BLOCK_M=block_m or 64, BLOCK_N=block_n or 32, num_warps=4, num_stages=2)
    return tuned, {}


# ---------------------------------------------------------------------------------------- launchers


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
    kernel, opts = _kernel(_attn_fwd_kernel, _fwd_tuned, block_m, block_n)
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
    kernel, opts = _kernel(_attn_bwd_dq_kernel, _dq_tuned, block_m, block_n)
    grid = lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
    kernel[grid](
        q, k, v, pad, out, do, lse, delta, dq, q, q,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *do.stride(), *dq.stride(), stride_pb, stride_pn,
        *lse_strides, *common, **dims, CAUSAL=bool(causal), **flags, VARLEN=False, **prec, **opts)

    kernel, opts = _kernel(_attn_bwd_dkdv_kernel, _dkdv_tuned, block_m, block_n)
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
    kernel, opts = _kernel(_attn_fwd_kernel, _fwd_tuned, block_m, block_n)
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

    kernel, opts = _kernel(_attn_bwd_dq_kernel, _dq_tuned, block_m, block_n)  # first: it stores delta
    grid = lambda meta: (triton.cdiv(bound_q, meta["BLOCK_M"]), n_seq * heads)  # noqa: E731
    kernel[grid](
        q, k, v, q, out, do, lse, delta, dq, cu_seqlens_q, cu_seqlens_k,
        *_packed_strides(q), *_packed_strides(k), *_packed_strides(v), *_packed_strides(out), *_packed_strides(do),
        *_packed_strides(dq), 0, 0, *common, **dims, **flags, **prec, **opts)

    kernel, opts = _kernel(_attn_bwd_dkdv_kernel, _dkdv_tuned, block_m, block_n)
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
