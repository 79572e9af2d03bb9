"""Fused Triton kernels of the log-sum-exp stripe (the `backend="triton"` of `contrastive_loss`).

Rows q (M, D) against keys k (N, D), s_ij = scale <q_i, k_j>, weights w_ij of spec.py (w = 0 drops a
pair; the positive terms are torch, see positives.py and compose.py):

forward, `_stripe_fwd_kernel`: one program per BLOCK_M rows sweeps the key blocks once.
    row_lse_i      = log sum_j w_ij exp(s_ij)                  (online, as FlashAttention's forward)
    col_part[p, j] = log sum_{i in row block p} w_ij exp(s_ij)  (COLUMNS; torch reduces the cdiv(M, BLOCK_M)
                                                                 partials of a column in a fixed order)
backward, `_stripe_ds_kernel`: one program per (BLOCK_M, BLOCK_N) tile of a chunk of rows writes
    dS_ij * scale = scale w_ij (a_i exp(s_ij - row_lse_i) + b_j exp(s_ij - col_lse_j))   (a, b: upstream grads)
in the input dtype, and a per-tile partial of sum_ij dS_ij <q_i, k_j> (dscale); then cuBLAS forms
dq[chunk] = dS @ k and dk += dS^T @ q[chunk] (fp32 accumulation across chunks).

Products (one = M x N x D multiply-adds): forward 1, backward 3 (recompute in the dS kernel, two GEMMs).
Memory beyond inputs and gradients: the column partials cdiv(M, BLOCK_M) x N fp32 (forward, with
COLUMNS), one dS chunk of `ds_rows` x N in the input dtype, and an fp32 N x D dk accumulator for 16-bit
inputs. Tiles loop over D in BLOCK_D chunks (D = 768 costs 1.5x D = 512, in the same tiles); exponentials
are exp2 with scale * log2(e) folded into one multiply; the label rules of a tile are evaluated once and
serve both the row and the column statistics. Multi-hot label sets enter as 0/1 tiles whose dot gives the
intersections |A & B| (exact in fp32 accumulation); "same set" is |A & B| = |A| = |B|.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.contrastive.spec import LabelCodes, LossOptions, unpack_multi_hot
from kernels.triton_common import interpreting
from kernels.triton_common import mm_acc

LOG2E = 1.4426950408889634
# the kernels read globals only as constexprs
LOG2E_K = tl.constexpr(LOG2E)
LN2_K = tl.constexpr(0.6931471805599453)
_LABEL_KIND = {None: 0, "class": 1, "bits": 2}
_WEIGHTING = {None: 0, "jaccard": 1, "cosine": 2}
# fp32 inputs use exact fp32 products: tf32 would put ~1e-3 relative error on logits that the scale
# (up to 100) magnifies.
FP32_INPUT_PRECISION = "ieee"


# ----------------------------------------------------------------------------------------- helpers


@triton.jit
def _scores(q_ptr, k_ptr, offs_m, offs_n, mask_m, mask_n, stride_qm, stride_kn, D,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN: tl.constexpr,
            FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 dots <q_i, k_j>, accumulated over D in BLOCK_D chunks (unit stride along D)."""
    offs_d = tl.arange(0, BLOCK_D)
    q_ptrs = q_ptr + offs_m.to(tl.int64)[:, None] * stride_qm + offs_d[None, :]
    k_ptrs = k_ptr + offs_n.to(tl.int64)[:, None] * stride_kn + offs_d[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for start_d in range(0, D, BLOCK_D):
        if EVEN:  # every tile full: no masks
            q = tl.load(q_ptrs)
            k = tl.load(k_ptrs)
        else:
            mask_d = offs_d < D - start_d
            q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            k = tl.load(k_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = mm_acc(q, tl.trans(k), acc, FP32_PRECISION, UPCAST)
        q_ptrs += BLOCK_D
        k_ptrs += BLOCK_D
    return acc


@triton.jit
def _pair_rules(
    offs_m, offs_n, mask_m, mask_n,
    row_ids_ptr, key_ids_ptr, row_hot_ptr, key_hot_ptr, row_pop_ptr, key_pop_ptr, stride_hot,
    offset, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    LABEL_KIND: tl.constexpr, POSITIVES_LABELS: tl.constexpr, EXCLUDE: tl.constexpr, WEIGHTING: tl.constexpr,
):
    """(keep, weight) of a tile: keep = w_ij > 0 on valid pairs; weight is read only when WEIGHTING."""
    keep = mask_m[:, None] & mask_n[None, :]
    weight = tl.full((BLOCK_M, BLOCK_N), 1.0, tl.float32)
    if LABEL_KIND != 0:
        positive = (offs_n[None, :] == offs_m[:, None] + offset) & keep
        row_pop = tl.load(row_pop_ptr + offs_m, mask=mask_m, other=0)
        key_pop = tl.load(key_pop_ptr + offs_n, mask=mask_n, other=0)
        same = (row_pop[:, None] > 0) & (key_pop[None, :] > 0) & keep  # an empty set matches nothing
        if LABEL_KIND == 1:
            row_id = tl.load(row_ids_ptr + offs_m, mask=mask_m, other=-1)
            key_id = tl.load(key_ids_ptr + offs_n, mask=mask_n, other=-1)
            same = same & (row_id[:, None] == key_id[None, :])
            sim = same.to(tl.float32)
        else:
            offs_c = tl.arange(0, BLOCK_C)
            row_hot = tl.load(row_hot_ptr + offs_m.to(tl.int64)[:, None] * stride_hot + offs_c[None, :],
                              mask=mask_m[:, None], other=0.0)
            key_hot = tl.load(key_hot_ptr + offs_n.to(tl.int64)[:, None] * stride_hot + offs_c[None, :],
                              mask=mask_n[:, None], other=0.0)
            inter = mm_acc(row_hot, tl.trans(key_hot), tl.zeros((BLOCK_M, BLOCK_N), tl.float32), "ieee", False)
            size_i = row_pop.to(tl.float32)[:, None]
            size_j = key_pop.to(tl.float32)[None, :]
            same = same & (inter == size_i) & (inter == size_j)
            if WEIGHTING == 1:
                denom = size_i + size_j - inter  # jaccard: |A and B| / |A or B|
            else:
                denom = tl.sqrt(size_i * size_j)  # cosine: |A and B| / sqrt(|A| |B|)
            sim = tl.where(denom > 0, inter / tl.where(denom > 0, denom, 1.0), 0.0)
        if POSITIVES_LABELS:
            positive = positive | same
        if WEIGHTING != 0:
            weight = tl.where(positive, 1.0, 1.0 - alpha * sim)
            keep = keep & (weight > 0)  # alpha = 1 zeroes identical sets: drop them
        if EXCLUDE:
            keep = keep & (positive | ~same)
    return keep, weight


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _stripe_fwd_kernel(
    q_ptr, k_ptr, scale_ptr,
    row_ids_ptr, key_ids_ptr, row_hot_ptr, key_hot_ptr, row_pop_ptr, key_pop_ptr,
    row_lse_ptr, col_part_ptr,
    stride_qm, stride_kn, stride_hot, stride_part,
    M, N, D, offset, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    EVEN: tl.constexpr, COLUMNS: tl.constexpr,
    LABEL_KIND: tl.constexpr, POSITIVES_LABELS: tl.constexpr, EXCLUDE: tl.constexpr, WEIGHTING: tl.constexpr,
    FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    scale2 = tl.load(scale_ptr).to(tl.float32) * LOG2E_K  # s in log2 units: exp2 is the native instruction
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running max of the kept s2
    l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of w 2^(s2 - m_i)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        s2 = _scores(q_ptr, k_ptr, offs_m, offs_n, mask_m, mask_n, stride_qm, stride_kn, D,
                     BLOCK_M, BLOCK_N, BLOCK_D, EVEN, FP32_PRECISION, UPCAST) * scale2
        keep, weight = _pair_rules(offs_m, offs_n, mask_m, mask_n, row_ids_ptr, key_ids_ptr, row_hot_ptr,
                                   key_hot_ptr, row_pop_ptr, key_pop_ptr, stride_hot, offset, alpha,
                                   BLOCK_M, BLOCK_N, BLOCK_C, LABEL_KIND, POSITIVES_LABELS, EXCLUDE, WEIGHTING)
        s2 = tl.where(keep, s2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, 1))
        # a row with nothing kept so far keeps m = -inf; shift it by 0 so no (-inf) - (-inf) = NaN appears
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s2 - m_shift[:, None])
        if WEIGHTING != 0:
            p = p * weight
        l_i = l_i * tl.exp2(m_i - m_shift) + tl.sum(p, 1)
        m_i = m_new
        if COLUMNS:
            c_max = tl.max(s2, 0)
            c_shift = tl.where(c_max == float("-inf"), 0.0, c_max)
            pc = tl.exp2(s2 - c_shift[None, :])
            if WEIGHTING != 0:
                pc = pc * weight
            tl.store(col_part_ptr + pid * stride_part + offs_n, (c_shift + tl.log2(tl.sum(pc, 0))) * LN2_K,
                     mask=mask_n)
    tl.store(row_lse_ptr + offs_m, (m_i + tl.log2(l_i)) * LN2_K, mask=mask_m)


@triton.jit
def _stripe_ds_kernel(
    q_ptr, k_ptr, scale_ptr,
    row_ids_ptr, key_ids_ptr, row_hot_ptr, key_hot_ptr, row_pop_ptr, key_pop_ptr,
    row_lse2_ptr, row_grad_ptr, col_lse2_ptr, col_grad_ptr,
    ds_ptr, dscale_ptr,
    stride_qm, stride_kn, stride_hot, stride_ds,
    row_start, row_stop, N, D, offset, alpha,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    EVEN: tl.constexpr, COLUMNS: tl.constexpr,
    LABEL_KIND: tl.constexpr, POSITIVES_LABELS: tl.constexpr, EXCLUDE: tl.constexpr, WEIGHTING: tl.constexpr,
    FP32_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    # program_id(0) runs fastest: the row blocks of one key block run together and share its tile in L2
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = row_start + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < row_stop
    mask_n = offs_n < N
    scale = tl.load(scale_ptr).to(tl.float32)
    dot = _scores(q_ptr, k_ptr, offs_m, offs_n, mask_m, mask_n, stride_qm, stride_kn, D,
                  BLOCK_M, BLOCK_N, BLOCK_D, EVEN, FP32_PRECISION, UPCAST)
    s2 = dot * (scale * LOG2E_K)
    keep, weight = _pair_rules(offs_m, offs_n, mask_m, mask_n, row_ids_ptr, key_ids_ptr, row_hot_ptr, key_hot_ptr,
                               row_pop_ptr, key_pop_ptr, stride_hot, offset, alpha,
                               BLOCK_M, BLOCK_N, BLOCK_C, LABEL_KIND, POSITIVES_LABELS, EXCLUDE, WEIGHTING)
    s2 = tl.where(keep, s2, float("-inf"))  # dropped pairs: exp2 gives 0, never inf (alpha = 1 can drop a top pair)
    row_lse2 = tl.load(row_lse2_ptr + offs_m, mask=mask_m, other=0.0)
    row_grad = tl.load(row_grad_ptr + offs_m, mask=mask_m, other=0.0)
    p = tl.exp2(s2 - row_lse2[:, None]) * row_grad[:, None]
    if COLUMNS:
        col_lse2 = tl.load(col_lse2_ptr + offs_n, mask=mask_n, other=0.0)
        col_grad = tl.load(col_grad_ptr + offs_n, mask=mask_n, other=0.0)
        p += tl.exp2(s2 - col_lse2[None, :]) * col_grad[None, :]
    if WEIGHTING != 0:
        p = p * weight
    ds = tl.where(keep, p, 0.0)  # padded rows and keys: 0
    tl.store(dscale_ptr + pid_m * tl.num_programs(1) + pid_n, tl.sum(tl.sum(ds * dot, 1), 0))
    tl.store(ds_ptr + (offs_m - row_start).to(tl.int64)[:, None] * stride_ds + offs_n[None, :],
             (ds * scale).to(ds_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ---------------------------------------------------------------------------------------- launch configs


# (BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) per kernel and input precision. Chosen by compiling for
# sm_90a without a GPU (`retina-bench resources`: no spills, wgmma for 16-bit, shared memory within the
# H100's 227 KiB), not yet timed on a GPU: benchmarks/gpu_session.sh sweeps the alternatives.
GPU_CONFIGS = {
    ("fwd", "16bit"): (128, 128, 64, 8, 3),
    ("ds", "16bit"): (128, 128, 64, 8, 3),
    ("fwd", "fp32"): (64, 64, 32, 4, 2),
    ("ds", "fp32"): (64, 64, 32, 4, 2),
}
# 16-bit alternatives the GPU tile sweep times (benchmarks/contrastive_tile_sweep.py); `retina-bench resources`
# compiles each first and the sweep skips any that spills or misses wgmma.
SWEEP_CANDIDATES = (
    (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 32, 8, 4), (128, 64, 64, 4, 3),
    (64, 128, 64, 4, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
)
INTERPRETER_CONFIG = (16, 16, 16, 4, 1)  # the smallest tiles tl.dot takes: the interpreter is slow
# Rows of dS written per backward chunk: the dq and dk GEMMs see (ds_rows x N) @ (N x D) and
# (N x ds_rows) @ (ds_rows x D); more rows mean fewer passes over the fp32 dk accumulator, more memory.
DS_ROWS = 1024


def precision_class(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def launch_config(kernel: str, dtype: torch.dtype, override: dict | None = None) -> dict:
    """Tile sizes and launch options of `kernel` ("fwd" | "ds") for inputs of `dtype`; `override` wins."""
    bm, bn, bd, warps, stages = INTERPRETER_CONFIG if interpreting() else GPU_CONFIGS[(kernel,
                                                                                          precision_class(dtype))]
    cfg = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages)
    return cfg | (override or {})


def label_args(rows: LabelCodes | None, keys: LabelCodes | None, opts: LossOptions, anchor: torch.Tensor):
    """(pointers, stride, constexpr flags) of the label rules; `anchor` fills the pointers never read.

    Only weighting and exclusion read labels in the kernels (positives are torch's, positives.py)."""
    if rows is None or keys is None or not (opts.weighting or opts.exclude_false_negatives):
        return (anchor,) * 6, 0, dict(LABEL_KIND=0, POSITIVES_LABELS=False, EXCLUDE=False, WEIGHTING=0, BLOCK_C=16)
    if rows.kind != keys.kind or rows.words.shape[1] != keys.words.shape[1]:
        raise ValueError("row and key labels must have the same kind and word count")
    pops = rows.popcount.to(torch.int32).contiguous(), keys.popcount.to(torch.int32).contiguous()
    flags = dict(LABEL_KIND=_LABEL_KIND[rows.kind], POSITIVES_LABELS=opts.positives == "labels",
                 EXCLUDE=bool(opts.exclude_false_negatives), WEIGHTING=_WEIGHTING[opts.weighting], BLOCK_C=16)
    if rows.kind == "class":
        ids = rows.words[:, 0].contiguous(), keys.words[:, 0].contiguous()
        return (*ids, anchor, anchor, *pops), 0, flags
    # 0/1 tiles for the intersection dot: bf16 is exact for 0/1 (the interpreter's 16-bit dot is not: fp32)
    width = max(16, triton.next_power_of_2(32 * rows.words.shape[1]))
    hot_dtype = torch.float32 if interpreting() else torch.bfloat16

    def hot(codes: LabelCodes) -> torch.Tensor:
        out = torch.zeros(len(codes), width, dtype=hot_dtype, device=codes.words.device)
        bits = unpack_multi_hot(codes.words)
        out[:, :bits.shape[1]] = bits.to(hot_dtype)
        return out

    return (anchor, anchor, hot(rows), hot(keys), *pops), width, flags | dict(BLOCK_C=width)


def _even(m: int, n: int, dim: int, cfg: dict) -> bool:
    return m % cfg["BLOCK_M"] == 0 and n % cfg["BLOCK_N"] == 0 and dim % cfg["BLOCK_D"] == 0


def _precision_args(dtype: torch.dtype) -> dict:
    return dict(FP32_PRECISION=FP32_INPUT_PRECISION, UPCAST=interpreting() and dtype != torch.float32)


# ---------------------------------------------------------------------------------------- launchers


def stripe_forward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, rows: LabelCodes | None,
                   keys: LabelCodes | None, offset: int | None, opts: LossOptions, columns: bool,
                   config: dict | None = None, row_lse: torch.Tensor | None = None,
                   parts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_lse (M,), col_lse (N,) or empty) fp32; q and k share a dtype and have unit stride along D.

    `row_lse` (M,) and `parts` (cdiv(M, BLOCK_M), N), fp32, are written in place when given (tests poison them).
    """
    m, dim = q.shape
    n = k.shape[0]
    cfg = launch_config("fwd", q.dtype, config)
    grid = triton.cdiv(m, cfg["BLOCK_M"])
    row_lse = torch.empty(m, dtype=torch.float32, device=q.device) if row_lse is None else row_lse
    if parts is None:
        parts = torch.empty((grid, n) if columns else (1, 1), dtype=torch.float32, device=q.device)
    ptrs, stride_hot, flags = label_args(rows, keys, opts, q)
    scale_buf = scale.detach().to(device=q.device, dtype=torch.float32).reshape(1)
    _stripe_fwd_kernel[(grid,)](
        q, k, scale_buf, *ptrs, row_lse, parts,
        q.stride(0), k.stride(0), stride_hot, parts.stride(0),
        m, n, dim, n if offset is None else offset, float(opts.alpha),
        EVEN=_even(m, n, dim, cfg), COLUMNS=columns, **cfg, **flags, **_precision_args(q.dtype))
    col_lse = torch.logsumexp(parts, dim=0) if columns else row_lse.new_empty(0)
    return row_lse, col_lse


def _finite(lse: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse in log2 units, grad); a row (column) with every pair dropped (lse -inf) gets 0 and no gradient."""
    empty = torch.isinf(lse)
    return torch.where(empty, 0.0, lse * LOG2E).contiguous(), torch.where(empty, 0.0, grad.float()).contiguous()


_ADDMM_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype")  # bf16 x bf16 -> fp32 accumulate (CUDA)


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b with fp32 accumulation whatever the 16-bit operands."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif _ADDMM_OUT_DTYPE and a.is_cuda:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.add_(torch.mm(a, b))


def stripe_backward(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, row_lse: torch.Tensor,
                    col_lse: torch.Tensor, grad_row: torch.Tensor, grad_col: torch.Tensor | None,
                    rows: LabelCodes | None, keys: LabelCodes | None, offset: int | None, opts: LossOptions,
                    need_dq: bool = True, need_dk: bool = True, ds_rows: int = DS_ROWS,
                    config: dict | None = None, ds: torch.Tensor | None = None):
    """(dq in q's dtype or None, dk in k's dtype or None, dscale fp32 0-dim) of sum_i a_i row_lse_i + sum_j b_j col_lse_j.

    `ds` is the (rows, N) dS chunk buffer in q's dtype (given by tests to poison it); its row count is the chunk.
    """
    m, dim = q.shape
    n = k.shape[0]
    columns = grad_col is not None
    cfg = launch_config("ds", q.dtype, config)
    if ds is not None:
        ds_rows = ds.shape[0]
    ds_rows = max(cfg["BLOCK_M"], ds_rows // cfg["BLOCK_M"] * cfg["BLOCK_M"])
    row_lse2, grad_row = _finite(row_lse, grad_row)
    col_lse2, grad_col = _finite(col_lse, grad_col) if columns else (row_lse2, grad_row)  # never read
    ptrs, stride_hot, flags = label_args(rows, keys, opts, q)
    scale_buf = scale.detach().to(device=q.device, dtype=torch.float32).reshape(1)
    dq = torch.empty_like(q) if need_dq else None
    dk = torch.zeros(n, dim, dtype=torch.float32, device=q.device) if need_dk else None
    ds = torch.empty(min(ds_rows, m), n, dtype=q.dtype, device=q.device) if ds is None else ds
    grid_n = triton.cdiv(n, cfg["BLOCK_N"])
    partials = []
    for start in range(0, m, ds_rows):
        stop = min(start + ds_rows, m)
        grid = (triton.cdiv(stop - start, cfg["BLOCK_M"]), grid_n)
        part = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=q.device)
        _stripe_ds_kernel[grid](
            q, k, scale_buf, *ptrs, row_lse2, grad_row, col_lse2, grad_col, ds, part,
            q.stride(0), k.stride(0), stride_hot, ds.stride(0),
            start, stop, n, dim, n if offset is None else offset, float(opts.alpha),
            EVEN=_even(stop - start, n, dim, cfg), COLUMNS=columns,
            **cfg, **flags, **_precision_args(q.dtype))
        partials.append(part.sum())
        chunk = ds[:stop - start]
        if need_dq:
            torch.mm(chunk, k, out=dq[start:stop])
        if need_dk:
            _accumulate(dk, chunk.T, q[start:stop])
    dscale = torch.stack(partials).sum()  # fixed order: deterministic
    return dq, None if dk is None else dk.to(k.dtype), dscale


# ------------------------------------------------------------------------------------------ autograd


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) == 1 and dtypes <= {torch.float32, torch.bfloat16, torch.float16}:
        return dtypes.pop()
    return torch.float32  # mixed or fp64 inputs: compute in fp32, return grads in each input's dtype


def _prepare(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = t.to(dtype)
    return t if t.stride(-1) == 1 else t.contiguous()  # unit stride along D for vectorised tile loads


class TritonStripe(torch.autograd.Function):
    """(row_lse (M,), col_lse (N,) or empty) of rows q against keys k; see the module doc."""

    @staticmethod
    def forward(ctx, q, k, scale, rows, keys, offset, opts, columns):
        dtype = _compute_dtype(q, k)
        qc, kc = _prepare(q, dtype), _prepare(k, dtype)
        row_lse, col_lse = stripe_forward(qc, kc, scale, rows, keys, offset, opts, columns)
        ctx.save_for_backward(qc, kc, scale, row_lse, col_lse)
        ctx.extras = (rows, keys, offset, opts, columns, q.dtype, k.dtype)
        return row_lse, col_lse

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        qc, kc, scale, row_lse, col_lse = ctx.saved_tensors
        rows, keys, offset, opts, columns, q_dtype, k_dtype = ctx.extras
        need_q, need_k, need_scale = ctx.needs_input_grad[:3]
        dq, dk, dscale = stripe_backward(qc, kc, scale, row_lse, col_lse, grad_row, grad_col if columns else None,
                                         rows, keys, offset, opts, need_dq=need_q, need_dk=need_k)
        return (None if dq is None else dq.to(q_dtype), None if dk is None else dk.to(k_dtype),
                dscale.reshape(scale.shape).to(scale.dtype) if need_scale else None, None, None, None, None, None)


def triton_stripe(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, rows: LabelCodes | None,
                  keys: LabelCodes | None, offset: int | None, opts: LossOptions,
                  columns: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for `chunked_stripe` (without the chunk size); offset None: no true pair."""
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError("the triton contrastive kernels need CUDA tensors, or TRITON_INTERPRET=1 set before "
                           "this module is imported (CPU testing)")
    return TritonStripe.apply(q, k, scale, rows, keys, offset, opts, columns)


__all__ = ["TritonStripe", "triton_stripe", "stripe_forward", "stripe_backward", "launch_config", "GPU_CONFIGS"]
