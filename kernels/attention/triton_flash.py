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

import triton
import triton.language as tl

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
def attn_fwd_kernel(
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
def attn_bwd_dq_kernel(
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
def attn_bwd_dkdv_kernel(
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
