"""The chunked pure-torch log-sum-exp stripe (the `backend="chunked"` of `contrastive_loss`): any device.

For rows q (M, D) against keys k (N, D), with s_ij = scale <q_i, k_j> and the weights w_ij of spec.py
(w = 0 drops a pair), one sweep over row chunks gives both

    row_lse_i = log sum_j w_ij exp(s_ij)        col_lse_j = log sum_i w_ij exp(s_ij)   (columns=True)

from the same similarity chunk (the column sums merge chunk by chunk with a running max, in a fixed
order). The backward takes the upstream gradients a_i (rows) and b_j (columns) and recomputes each chunk
once:

    dS_ij = w_ij (a_i exp(s_ij - row_lse_i) + b_j exp(s_ij - col_lse_j))
    dq_i = scale sum_j dS_ij k_j      dk_j = scale sum_i dS_ij q_i      dscale = sum_i <q_i, sum_j dS_ij k_j>

so forward + backward is 4 M x N x D products (similarities, their recomputation, dq, dk). Memory beyond
the inputs and outputs: a few (chunk, N) fp32 buffers and O(M + N) statistics.
"""

from __future__ import annotations

import torch

from kernels.contrastive.spec import LabelCodes, LossOptions, pair_rules


def _log_weights(start: int, rows_in_chunk: int, n: int, offset: int | None, rows: LabelCodes | None,
                 keys: LabelCodes | None, opts: LossOptions, device) -> torch.Tensor | None:
    """log w of a row chunk (-inf drops a pair), or None when every weight is 1 (no label rules)."""
    if rows is None or keys is None:
        return None
    i = torch.arange(start, start + rows_in_chunk, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    _, weight = pair_rules(i, j, n if offset is None else offset, rows, keys, opts)
    return torch.log(weight)


def _finite(lse: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A row (column) with every pair dropped has lse -inf: shift it by 0 and give it no gradient."""
    empty = torch.isinf(lse)
    return torch.where(empty, 0.0, lse), torch.where(empty, 0.0, grad)


class ChunkedStripe(torch.autograd.Function):
    """(row_lse (M,), col_lse (N,) or empty) of rows q against keys k; see the module doc."""

    @staticmethod
    def forward(ctx, q, k, scale, rows, keys, offset, opts, columns, chunk):
        qf, kf, sf = q.float(), k.float(), scale.detach().float().reshape(())
        m, n = q.shape[0], k.shape[0]
        row_lse = torch.empty(m, dtype=torch.float32, device=q.device)
        col_max = torch.full((n if columns else 0,), float("-inf"), device=q.device)
        col_sum = torch.zeros_like(col_max)
        for start in range(0, m, chunk):
            s = torch.mm(qf[start:start + chunk], kf.T).mul_(sf)
            log_w = _log_weights(start, s.shape[0], n, offset, rows, keys, opts, q.device)
            if log_w is not None:
                s.add_(log_w)
            row_lse[start:start + chunk] = torch.logsumexp(s, dim=1)
            if columns:
                new_max = torch.maximum(col_max, s.amax(dim=0))
                shift = torch.where(torch.isinf(new_max), 0.0, new_max)
                col_sum.mul_(torch.exp(col_max - shift)).add_(s.sub_(shift).exp_().sum(dim=0))
                col_max = new_max
        col_lse = torch.where(torch.isinf(col_max), col_max, col_max + torch.log(col_sum))
        ctx.save_for_backward(q, k, scale, row_lse, col_lse)
        ctx.extras = (rows, keys, offset, opts, columns, chunk)
        return row_lse, col_lse

    @staticmethod
    def backward(ctx, grad_row, grad_col):
        q, k, scale, row_lse, col_lse = ctx.saved_tensors
        rows, keys, offset, opts, columns, chunk = ctx.extras
        need_q, need_k, need_scale = ctx.needs_input_grad[:3]
        qf, kf, sf = q.float(), k.float(), scale.detach().float().reshape(())
        n = k.shape[0]
        row_lse, grad_row = _finite(row_lse, grad_row.float())
        if columns:
            col_lse, grad_col = _finite(col_lse, grad_col.float())
        dq = torch.empty_like(qf) if need_q else None
        dk = torch.zeros_like(kf) if need_k else None
        dscale = torch.zeros((), dtype=torch.float32, device=q.device)
        for start in range(0, q.shape[0], chunk):
            q_c = qf[start:start + chunk]
            s = torch.mm(q_c, kf.T).mul_(sf)
            log_w = _log_weights(start, s.shape[0], n, offset, rows, keys, opts, q.device)
            if log_w is not None:
                s.add_(log_w)
            rows_c = slice(start, start + s.shape[0])
            ds = torch.sub(s, row_lse[rows_c, None]).exp_().mul_(grad_row[rows_c, None])
            if columns:
                ds.add_(s.sub_(col_lse).exp_().mul_(grad_col))
            del s
            dq_c = torch.mm(ds, kf)  # sum_j dS_ij k_j; times scale below
            if need_scale:
                dscale += (dq_c * q_c).sum()
            if need_q:
                dq[rows_c] = dq_c.mul_(sf)
            if need_k:
                dk.addmm_(ds.T, q_c)
        if need_k:
            dk.mul_(sf)
        return (None if dq is None else dq.to(q.dtype), None if dk is None else dk.to(k.dtype),
                dscale.reshape(scale.shape).to(scale.dtype) if need_scale else None,
                None, None, None, None, None, None)


def chunked_stripe(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, rows: LabelCodes | None,
                   keys: LabelCodes | None, offset: int | None, opts: LossOptions, columns: bool,
                   chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_lse (M,), col_lse (N,) when `columns`, else an empty tensor); offset None: no true pair."""
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    return ChunkedStripe.apply(q, k, scale, rows, keys, offset, opts, columns, chunk)
