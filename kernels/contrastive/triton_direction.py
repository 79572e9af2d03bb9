"""Fused Triton kernels for one contrastive direction (the `backend="triton"` of `contrastive_loss`).

M queries q_i against N = N_grad + Q keys k_j (the last Q are a queue without gradient). With
s_ij = scale * <q_i, k_j> and the positive mask P_ij / weights w_ij of `kernels.contrastive.spec`:

    lse_i = log sum_j w_ij exp(s_ij)              (w_ij = 0 drops the pair: excluded false negatives)
    c_i   = sum_j P_ij                            (>= 1: the true pair j = i + offset is always positive)
    L_i   = lse_i - sum_j P_ij s_ij / c_i,        loss = mean_i L_i

Backward, with g = dloss / M and p_ij = w_ij exp(s_ij - lse_i) (the softmax under the weights):

    dS_ij  = g (p_ij - P_ij / c_i)
    dq_i   = scale * sum_j dS_ij k_j              dk_j = scale * sum_i dS_ij q_i   (j < N_grad only)
    dscale = sum_ij dS_ij <q_i, k_j>

Nothing M x N is stored. The forward sweeps key blocks with an online log-sum-exp and saves lse_i
and c_i per row; the backward recomputes each (BLOCK_M, BLOCK_N) tile twice, once per row block for
dq (and a per-block partial of dscale, summed in torch: deterministic) and once per key block for
dk, so neither needs atomics. P_ij and w_ij are rebuilt in-kernel from the label words of the tile
(class ids, or multi-hot sets packed into int32 words whose intersections a SWAR popcount counts);
constexpr flags compile the unused rules out, so the plain CLIP loss pays only for the identity mask.

Tiles hold the whole embedding (BLOCK_D = next power of two >= D, masked); the dots accumulate in
fp32 whatever the input dtype (fp32, bf16, fp16), and the gradients are written in the input dtype.
Block sizes are fixed per D range and dtype (`_GPU_CONFIGS`); timing/autotuning them on a GPU is still to do.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from kernels.triton_common import interpreting as _interpreting
from kernels.triton_common import mm as _mm
from kernels.contrastive.spec import LabelCodes, LossOptions

_LABEL_KIND = {None: 0, "class": 1, "bits": 2}
_WEIGHTING = {None: 0, "jaccard": 1, "cosine": 2}
# fp32 inputs use exact fp32 products: tf32 would put ~1e-3 relative error on logits that the scale
# (up to 100) magnifies. "tf32x3" is the faster candidate to benchmark on a GPU.
FP32_INPUT_PRECISION = "ieee"


# ----------------------------------------------------------------------------------------- helpers


@triton.jit
def _popcount32(x):
    # SWAR popcount of int32 words; arithmetic shifts are harmless because every step masks.
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    return x & 0x3F


@triton.jit
def _load_rows(ptr, offs_r, mask_r, stride_r, offs_d, mask_d, stride_d):
    """A (rows, BLOCK_D) tile of an embedding matrix; rows and columns out of range load as 0."""
    return tl.load(ptr + offs_r.to(tl.int64)[:, None] * stride_r + offs_d[None, :] * stride_d,
                   mask=mask_r[:, None] & mask_d[None, :], other=0.0)


@triton.jit
def _pair_rules(
    offs_m, offs_n, mask_m, mask_n,
    row_words_ptr, row_pop_ptr, key_words_ptr, key_pop_ptr,
    stride_rw, stride_kw,
    offset, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    LABEL_KIND: tl.constexpr, POSITIVES_LABELS: tl.constexpr, EXCLUDE: tl.constexpr,
    WEIGHTING: tl.constexpr, NUM_WORDS: tl.constexpr,
):
    """(positive, keep, weight) of a tile: keep is w_ij > 0 on valid keys; weight only when WEIGHTING."""
    positive = (offs_n[None, :] == offs_m[:, None] + offset) & mask_n[None, :]
    keep = positive | mask_n[None, :]  # (BLOCK_M, BLOCK_N): every valid key, until a rule drops it
    weight = tl.full((BLOCK_M, BLOCK_N), 1.0, tl.float32)
    if LABEL_KIND != 0:
        row_pop = tl.load(row_pop_ptr + offs_m, mask=mask_m, other=0)
        key_pop = tl.load(key_pop_ptr + offs_n, mask=mask_n, other=0)
        # an empty set (no labels, class id < 0) matches nothing
        same = (row_pop[:, None] > 0) & (key_pop[None, :] > 0) & mask_n[None, :]
        inter = tl.zeros((BLOCK_M, BLOCK_N), tl.int32)
        for w in tl.static_range(NUM_WORDS):
            row_w = tl.load(row_words_ptr + offs_m * stride_rw + w, mask=mask_m, other=0)
            key_w = tl.load(key_words_ptr + offs_n * stride_kw + w, mask=mask_n, other=0)
            same = same & (row_w[:, None] == key_w[None, :])
            if LABEL_KIND == 2 and WEIGHTING != 0:
                inter += _popcount32(row_w[:, None] & key_w[None, :])
        if POSITIVES_LABELS:
            positive = positive | same
        if WEIGHTING != 0:
            if LABEL_KIND == 1:
                sim = same.to(tl.float32)
            else:
                inter_f = inter.to(tl.float32)
                size_i = row_pop.to(tl.float32)[:, None]
                size_j = key_pop.to(tl.float32)[None, :]
                if WEIGHTING == 1:
                    denom = size_i + size_j - inter_f  # jaccard: |A and B| / |A or B|
                else:
                    denom = tl.sqrt(size_i * size_j)  # cosine: |A and B| / sqrt(|A| |B|)
                sim = tl.where(denom > 0, inter_f / tl.where(denom > 0, denom, 1.0), 0.0)
            weight = tl.where(positive, 1.0, 1.0 - alpha * sim)
            # alpha = 1 can zero a weight: drop the pair so it cannot set the running max
            keep = keep & (weight > 0)
        if EXCLUDE:
            keep = keep & (positive | ~same)
    return positive, keep, weight


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _contrastive_fwd_kernel(
    q_ptr, k_ptr, scale_ptr,
    row_words_ptr, row_pop_ptr, key_words_ptr, key_pop_ptr,
    lse_ptr, loss_ptr, count_ptr,
    stride_qm, stride_qd, stride_kn, stride_kd, stride_rw, stride_kw,
    M, N, D, offset, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    LABEL_KIND: tl.constexpr, POSITIVES_LABELS: tl.constexpr, EXCLUDE: tl.constexpr,
    WEIGHTING: tl.constexpr, NUM_WORDS: tl.constexpr,
    FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    q = _load_rows(q_ptr, offs_m, mask_m, stride_qm, offs_d, mask_d, stride_qd)
    scale = tl.load(scale_ptr).to(tl.float32)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the kept s_ij
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of w_ij exp(s_ij - m_i)
    pos_sum = tl.zeros((BLOCK_M,), tl.float32)
    pos_count = tl.zeros((BLOCK_M,), tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k = _load_rows(k_ptr, offs_n, mask_n, stride_kn, offs_d, mask_d, stride_kd)
        s = _mm(q, tl.trans(k), FP32_PRECISION, UPCAST) * scale
        positive, keep, weight = _pair_rules(
            offs_m, offs_n, mask_m, mask_n, row_words_ptr, row_pop_ptr, key_words_ptr, key_pop_ptr,
            stride_rw, stride_kw, offset, alpha, BLOCK_M, BLOCK_N,
            LABEL_KIND, POSITIVES_LABELS, EXCLUDE, WEIGHTING, NUM_WORDS)
        s_kept = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s_kept, 1))
        # a row with nothing kept so far keeps m = -inf; shift by 0 then so no (-inf) - (-inf) = NaN
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        e = tl.exp(s_kept - m_shift[:, None])
        if WEIGHTING != 0:
            e = e * weight
        l_i = l_i * tl.exp(m_i - m_shift) + tl.sum(e, 1)
        m_i = m_new
        pos_sum += tl.sum(tl.where(positive, s, 0.0), 1)
        pos_count += tl.sum(positive.to(tl.float32), 1)

    lse = m_i + tl.log(l_i)
    tl.store(lse_ptr + offs_m, lse, mask=mask_m)
    # padded rows (no positive) divide by 1 instead of 0; valid rows always have c_i >= 1
    tl.store(loss_ptr + offs_m, lse - pos_sum / tl.maximum(pos_count, 1.0), mask=mask_m)
    tl.store(count_ptr + offs_m, pos_count, mask=mask_m)


@triton.jit
def _contrastive_bwd_dq_kernel(
    q_ptr, k_ptr, scale_ptr, grad_ptr, lse_ptr, count_ptr,
    row_words_ptr, row_pop_ptr, key_words_ptr, key_pop_ptr,
    dq_ptr, dscale_ptr,
    stride_qm, stride_qd, stride_kn, stride_kd, stride_rw, stride_kw, stride_dqm, stride_dqd,
    M, N, D, offset, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    LABEL_KIND: tl.constexpr, POSITIVES_LABELS: tl.constexpr, EXCLUDE: tl.constexpr,
    WEIGHTING: tl.constexpr, NUM_WORDS: tl.constexpr,
    FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    q = _load_rows(q_ptr, offs_m, mask_m, stride_qm, offs_d, mask_d, stride_qd)
    scale = tl.load(scale_ptr).to(tl.float32)
    g = tl.load(grad_ptr).to(tl.float32) / M  # read on device: no host sync for the upstream grad
    lse = tl.load(lse_ptr + offs_m, mask=mask_m, other=0.0)
    inv_count = 1.0 / tl.load(count_ptr + offs_m, mask=mask_m, other=1.0)

    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    dscale = tl.zeros((BLOCK_M,), tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k = _load_rows(k_ptr, offs_n, mask_n, stride_kn, offs_d, mask_d, stride_kd)
        dot = _mm(q, tl.trans(k), FP32_PRECISION, UPCAST)
        positive, keep, weight = _pair_rules(
            offs_m, offs_n, mask_m, mask_n, row_words_ptr, row_pop_ptr, key_words_ptr, key_pop_ptr,
            stride_rw, stride_kw, offset, alpha, BLOCK_M, BLOCK_N,
            LABEL_KIND, POSITIVES_LABELS, EXCLUDE, WEIGHTING, NUM_WORDS)
        # dropped pairs go through exp(-inf) = 0 rather than exp(large) = inf
        p = tl.exp(tl.where(keep, dot * scale - lse[:, None], float("-inf")))
        if WEIGHTING != 0:
            p = p * weight
        ds = g * (p - tl.where(positive, inv_count[:, None], 0.0))
        ds = tl.where(mask_m[:, None], ds, 0.0)  # padded rows: q = 0 already, but their p is not a softmax
        dq += _mm(ds.to(k.dtype), k, FP32_PRECISION, UPCAST)
        dscale += tl.sum(ds * dot, 1)

    tl.store(dq_ptr + offs_m.to(tl.int64)[:, None] * stride_dqm + offs_d[None, :] * stride_dqd,
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(dscale_ptr + pid, tl.sum(dscale, 0))


@triton.jit
def _contrastive_bwd_dk_kernel(
    q_ptr, k_ptr, scale_ptr, grad_ptr, lse_ptr, count_ptr,
    row_words_ptr, row_pop_ptr, key_words_ptr, key_pop_ptr,
    dk_ptr,
    stride_qm, stride_qd, stride_kn, stride_kd, stride_rw, stride_kw, stride_dkn, stride_dkd,
    M, N, N_GRAD, D, offset, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    LABEL_KIND: tl.constexpr, POSITIVES_LABELS: tl.constexpr, EXCLUDE: tl.constexpr,
    WEIGHTING: tl.constexpr, NUM_WORDS: tl.constexpr,
    FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    # one program per block of the N_GRAD keys with gradient; the queue (N_GRAD..N) has none
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N_GRAD
    mask_d = offs_d < D
    k = _load_rows(k_ptr, offs_n, mask_n, stride_kn, offs_d, mask_d, stride_kd)
    scale = tl.load(scale_ptr).to(tl.float32)
    g = tl.load(grad_ptr).to(tl.float32) / M

    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start_m in range(0, M, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        q = _load_rows(q_ptr, offs_m, mask_m, stride_qm, offs_d, mask_d, stride_qd)
        lse = tl.load(lse_ptr + offs_m, mask=mask_m, other=0.0)
        inv_count = 1.0 / tl.load(count_ptr + offs_m, mask=mask_m, other=1.0)
        dot = _mm(q, tl.trans(k), FP32_PRECISION, UPCAST)
        positive, keep, weight = _pair_rules(
            offs_m, offs_n, mask_m, mask_n, row_words_ptr, row_pop_ptr, key_words_ptr, key_pop_ptr,
            stride_rw, stride_kw, offset, alpha, BLOCK_M, BLOCK_N,
            LABEL_KIND, POSITIVES_LABELS, EXCLUDE, WEIGHTING, NUM_WORDS)
        # dropped pairs go through exp(-inf) = 0 rather than exp(large) = inf
        p = tl.exp(tl.where(keep, dot * scale - lse[:, None], float("-inf")))
        if WEIGHTING != 0:
            p = p * weight
        ds = g * (p - tl.where(positive, inv_count[:, None], 0.0))
        ds = tl.where(mask_m[:, None], ds, 0.0)
        dk += _mm(tl.trans(ds.to(q.dtype)), q, FP32_PRECISION, UPCAST)

    tl.store(dk_ptr + offs_n.to(tl.int64)[:, None] * stride_dkn + offs_d[None, :] * stride_dkd,
             (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


# ---------------------------------------------------------------------------------------- launchers


# (BLOCK_M, BLOCK_N, num_warps, num_stages) by BLOCK_D. First picked by compiling for sm_90 without a GPU
# (largest tiles without spills); the 16-bit rows for BLOCK_D 512 and 1024 were then re-picked by timing a
# sweep on an H100 (benchmarks/contrastive_tile_sweep.py, B = 16384, results in benchmarks/results/):
# 64x64 w8 s2 runs forward + dq + dk in 8.0 ms against 18.2 ms for the old 32x32 w8 s1 at D = 512. At
# D = 768 (BLOCK_D 1024) most tiles exceed shared memory and the only faster total (32x64 w8 s2) doubled
# the dk kernel, which made the whole backward slower in the benchmark, so that row stays. The other rows
# are still the untimed compile-only picks.
_GPU_CONFIGS = {
    "16bit": {128: (64, 64, 8, 2), 256: (32, 64, 8, 2), 512: (64, 64, 8, 2), None: (16, 32, 8, 1)},
    "fp32": {128: (32, 64, 8, 2), 256: (32, 32, 8, 2), 512: (16, 32, 8, 1), None: (16, 16, 8, 1)},
}


def _launch_config(dim: int, dtype: torch.dtype, block_m: int | None, block_n: int | None) -> dict:
    """Tile sizes and launch options. The interpreter gets the smallest tiles tl.dot accepts (16)."""
    block_d = max(16, triton.next_power_of_2(dim))
    if _interpreting():
        bm, bn, warps, stages = 16, 16, 4, 1
    else:
        table = _GPU_CONFIGS["fp32" if dtype == torch.float32 else "16bit"]
        bm, bn, warps, stages = next(cfg for limit, cfg in table.items() if limit is None or block_d <= limit)
    return dict(BLOCK_M=block_m or bm, BLOCK_N=block_n or bn, BLOCK_D=block_d, num_warps=warps, num_stages=stages)


def _rule_args(rows: LabelCodes | None, key_codes: LabelCodes | None, opts: LossOptions, dummy: torch.Tensor):
    """Label pointers/strides and the constexpr flags that select the compiled pair rules."""
    if rows is None or key_codes is None:
        # no labels: identity positives, unit weights; the pointers are never read
        return (dummy, dummy, dummy, dummy, 0, 0), dict(LABEL_KIND=0, POSITIVES_LABELS=False, EXCLUDE=False,
                                                         WEIGHTING=0, NUM_WORDS=1)
    if rows.kind != key_codes.kind or rows.words.shape[1] != key_codes.words.shape[1]:
        raise ValueError("row and key labels must have the same kind and word count")
    rw, kw = rows.words.contiguous(), key_codes.words.contiguous()
    ptrs = (rw, rows.popcount.to(torch.int32).contiguous(), kw, key_codes.popcount.to(torch.int32).contiguous(),
            rw.stride(0), kw.stride(0))
    flags = dict(LABEL_KIND=_LABEL_KIND[rows.kind], POSITIVES_LABELS=opts.positives == "labels",
                 EXCLUDE=bool(opts.exclude_false_negatives), WEIGHTING=_WEIGHTING[opts.weighting],
                 NUM_WORDS=rw.shape[1])
    return ptrs, flags


def _precision_args(dtype: torch.dtype) -> dict:
    return dict(FP32_PRECISION=FP32_INPUT_PRECISION, UPCAST=_interpreting() and dtype != torch.float32)


def _check_labels(rows, key_codes, m: int, n: int):
    if rows is not None and len(rows) != m:
        raise ValueError(f"{len(rows)} row labels for {m} queries")
    if key_codes is not None and len(key_codes) != n:
        raise ValueError(f"{len(key_codes)} key labels for {n} keys (queue included)")


def _scale_buffer(scale: torch.Tensor, device: torch.device) -> torch.Tensor:
    return scale.detach().to(device=device, dtype=torch.float32).reshape(1)


def contrastive_forward(q: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, rows: LabelCodes | None,
                        key_codes: LabelCodes | None, offset: int, opts: LossOptions, *,
                        lse: torch.Tensor | None = None, row_loss: torch.Tensor | None = None,
                        count: torch.Tensor | None = None, block_m: int | None = None,
                        block_n: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (L_i, lse_i, c_i), fp32 (M,), for queries q (M, D) against all keys (N, D), queue included.

    q and keys must share a dtype (fp32, bf16 or fp16). The optional outputs are written in place.
    """
    m, dim = q.shape
    n = keys.shape[0]
    _check_labels(rows, key_codes, m, n)
    lse = torch.empty(m, dtype=torch.float32, device=q.device) if lse is None else lse
    row_loss = torch.empty_like(lse) if row_loss is None else row_loss
    count = torch.empty_like(lse) if count is None else count
    cfg = _launch_config(dim, q.dtype, block_m, block_n)
    ptrs, flags = _rule_args(rows, key_codes, opts, q)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]),)
    _contrastive_fwd_kernel[grid](
        q, keys, _scale_buffer(scale, q.device), *ptrs[:4],
        lse, row_loss, count,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), *ptrs[4:],
        m, n, dim, offset, float(opts.alpha),
        **cfg, **flags, **_precision_args(q.dtype))
    return row_loss, lse, count


def contrastive_backward(grad: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, n_grad: int, scale: torch.Tensor,
                         lse: torch.Tensor, count: torch.Tensor, rows: LabelCodes | None,
                         key_codes: LabelCodes | None, offset: int, opts: LossOptions, *,
                         need_dq: bool = True, need_dk: bool = True, dq: torch.Tensor | None = None,
                         dk: torch.Tensor | None = None, dscale_partials: torch.Tensor | None = None,
                         block_m: int | None = None, block_n: int | None = None
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dq (M, D), dk (n_grad, D), dscale 0-dim fp32) of `grad * mean_i L_i`; grads in the inputs' dtype.

    `need_dq` also gates dscale (both come from the row-block kernel). `dscale_partials` holds one fp32
    partial per row block (cdiv(M, BLOCK_M)); they are summed here, in a fixed order.
    """
    m, dim = q.shape
    n = keys.shape[0]
    _check_labels(rows, key_codes, m, n)
    cfg = _launch_config(dim, q.dtype, block_m, block_n)
    ptrs, flags = _rule_args(rows, key_codes, opts, q)
    prec = _precision_args(q.dtype)
    scale_buf = _scale_buffer(scale, q.device)
    grad = grad.detach().to(device=q.device, dtype=torch.float32).reshape(1)
    dscale = None
    if need_dq:
        blocks = triton.cdiv(m, cfg["BLOCK_M"])
        dq = torch.empty_like(q) if dq is None else dq
        dscale_partials = (torch.empty(blocks, dtype=torch.float32, device=q.device)
                           if dscale_partials is None else dscale_partials)
        _contrastive_bwd_dq_kernel[(blocks,)](
            q, keys, scale_buf, grad, lse, count, *ptrs[:4],
            dq, dscale_partials,
            q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), *ptrs[4:], dq.stride(0), dq.stride(1),
            m, n, dim, offset, float(opts.alpha),
            **cfg, **flags, **prec)
        dscale = dscale_partials.sum()
    else:
        dq = None
    if need_dk:
        dk = torch.empty(n_grad, dim, dtype=keys.dtype, device=q.device) if dk is None else dk
        if n_grad > 0:
            _contrastive_bwd_dk_kernel[(triton.cdiv(n_grad, cfg["BLOCK_N"]),)](
                q, keys, scale_buf, grad, lse, count, *ptrs[:4],
                dk,
                q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), *ptrs[4:], dk.stride(0), dk.stride(1),
                m, n, n_grad, dim, offset, float(opts.alpha),
                **cfg, **flags, **prec)
    else:
        dk = None
    return dq, dk, dscale


# ------------------------------------------------------------------------------------------ autograd


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtypes = {t.dtype for t in tensors if t is not None}
    if len(dtypes) == 1 and dtypes <= {torch.float32, torch.bfloat16, torch.float16}:
        return dtypes.pop()
    return torch.float32  # mixed or fp64 inputs: compute in fp32, return grads in each input's dtype


def _prepare(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = t.to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()  # unit stride along D for vectorised tile loads


class TritonDirection(torch.autograd.Function):
    """Mean over rows of L_i for queries q against keys k (+ a queue without gradient); see the module doc."""

    @staticmethod
    def forward(ctx, q, k, queue, scale, rows, key_codes, offset, opts):
        dtype = _compute_dtype(q, k, queue)
        qc = _prepare(q, dtype)
        keys = _prepare(torch.cat([k, queue.to(k.dtype)]) if queue is not None else k, dtype)
        row_loss, lse, count = contrastive_forward(qc, keys, scale, rows, key_codes, offset, opts)
        ctx.save_for_backward(qc, keys, scale, lse, count)
        ctx.extras = (rows, key_codes, offset, opts, k.shape[0], q.dtype, k.dtype)
        return row_loss.sum() / q.shape[0]

    @staticmethod
    def backward(ctx, grad):
        qc, keys, scale, lse, count = ctx.saved_tensors
        rows, key_codes, offset, opts, n_grad, q_dtype, k_dtype = ctx.extras
        need_q, need_k, _, need_scale = ctx.needs_input_grad[:4]
        dq, dk, dscale = contrastive_backward(grad, qc, keys, n_grad, scale, lse, count, rows, key_codes, offset,
                                              opts, need_dq=need_q or need_scale, need_dk=need_k)
        dq = dq.to(q_dtype) if need_q else None
        dk = dk.to(k_dtype) if need_k else None
        dscale = dscale.reshape(scale.shape).to(scale.dtype) if need_scale else None
        return dq, dk, None, dscale, None, None, None, None


def triton_direction(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None, scale: torch.Tensor,
                     rows: LabelCodes | None, key_codes: LabelCodes | None, offset: int,
                     opts: LossOptions) -> torch.Tensor:
    """Drop-in for `chunked_direction` (without the chunk size): q (M, D) against k (N_grad, D) then queue."""
    if q.device.type != "cuda" and not _interpreting():
        raise RuntimeError("the triton contrastive kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "this module is imported (CPU testing)")
    if not torch.is_tensor(scale):
        scale = torch.tensor(float(scale), device=q.device)
    return TritonDirection.apply(q, k, queue, scale, rows, key_codes, offset, opts)


__all__ = ["TritonDirection", "triton_direction", "contrastive_forward", "contrastive_backward"]
