"""The chunked pure-torch contrastive direction: O(chunk x N) memory, any device.

Forward sweeps row chunks, keeping only the per-row log-sum-exp; backward recomputes each chunk's
similarities from the saved inputs (the same scheme as the Triton kernels, in plain torch):

    p_ij = exp(s_ij + log w_ij - lse_i),  dL/ds_ij = (p_ij - P_ij / c_i) / M
    dq_i = scale * sum_j dL/ds_ij k_j,  dk_j = scale * sum_i dL/ds_ij q_i,  dscale = sum dL/ds_ij <q_i, k_j>

Without labels (identity positives, unit weights) no mask or weight matrix is built at all: the
positive of row i is the single entry on the chunk's shifted diagonal.
"""

from __future__ import annotations

import torch

from kernels.contrastive.spec import LabelCodes, LossOptions, pair_rules


def _rules(start: int, m: int, n: int, offset: int, rows: LabelCodes | None, key_codes: LabelCodes | None,
           opts: LossOptions, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(positive mask, log weights) of a row chunk, or None on the label-free fast path."""
    if rows is None:
        return None
    i = torch.arange(start, start + m, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    positive, weight = pair_rules(i, j, offset, rows, key_codes, opts)
    return positive, torch.log(weight)  # log 0 = -inf drops excluded pairs exactly


class ChunkedDirection(torch.autograd.Function):
    """Mean over rows of L_i for queries q against keys (+ a queue that gets no gradient)."""

    @staticmethod
    def forward(ctx, q, k, queue, scale, rows, key_codes, offset, opts, chunk):
        keys = (torch.cat([k, queue.to(k.dtype)]) if queue is not None else k).float()
        qf, sf = q.float(), scale.float()
        lse = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
        count = torch.ones_like(lse)
        total = torch.zeros((), dtype=torch.float32, device=q.device)
        for start in range(0, q.shape[0], chunk):
            s = sf * (qf[start:start + chunk] @ keys.T)
            rules = _rules(start, s.shape[0], s.shape[1], offset, rows, key_codes, opts, q.device)
            if rules is None:
                lse_c = torch.logsumexp(s, dim=1)
                target = s.diagonal(start + offset)
            else:
                positive, log_w = rules
                lse_c = torch.logsumexp(s + log_w, dim=1)
                count[start:start + chunk] = positive.sum(1)
                target = (s * positive).sum(1) / count[start:start + chunk]
            total += (lse_c - target).sum()
            lse[start:start + chunk] = lse_c
        ctx.save_for_backward(q, k, keys, scale, lse, count)
        ctx.extras = (rows, key_codes, offset, opts, chunk)
        return total / q.shape[0]

    @staticmethod
    def backward(ctx, grad):
        q, k, keys, scale, lse, count = ctx.saved_tensors
        rows, key_codes, offset, opts, chunk = ctx.extras
        qf, sf = q.float(), scale.float()
        g = grad.float() / q.shape[0]
        n_grad = k.shape[0]
        dq = torch.empty_like(qf)
        dk = torch.zeros(n_grad, keys.shape[1], dtype=torch.float32, device=q.device)
        dscale = torch.zeros((), dtype=torch.float32, device=q.device)
        for start in range(0, q.shape[0], chunk):
            q_c = qf[start:start + chunk]
            dot = q_c @ keys.T
            s = sf * dot
            rules = _rules(start, s.shape[0], s.shape[1], offset, rows, key_codes, opts, q.device)
            if rules is None:
                ds = torch.exp(s - lse[start:start + chunk, None])
                ds.diagonal(start + offset).sub_(1.0)
            else:
                positive, log_w = rules
                ds = torch.exp(s + log_w - lse[start:start + chunk, None]) - positive / count[start:start + chunk, None]
            ds *= g
            dq[start:start + chunk] = sf * (ds @ keys)
            dk += sf * (ds[:, :n_grad].T @ q_c)
            dscale += torch.dot(ds.flatten(), dot.flatten())
        return (dq.to(q.dtype), dk.to(k.dtype), None, dscale.reshape(scale.shape).to(scale.dtype),
                None, None, None, None, None)


def chunked_direction(q, k, queue, scale, rows, key_codes, offset, opts, chunk: int = 1024) -> torch.Tensor:
    return ChunkedDirection.apply(q, k, queue, scale, rows, key_codes, offset, opts, chunk)
