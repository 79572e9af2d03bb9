"""The chunked pure-torch contrastive direction: O(chunk x N) memory, any device.

Forward sweeps row chunks, keeping only the per-row log-sum-exp; backward recomputes each chunk's
similarities from the saved inputs (the same scheme as the Triton kernels, in plain torch):

    p_ij = exp(s_ij + log w_ij - lse_i),  dL/ds_ij = (p_ij - P_ij / c_i) / M
    dq_i = scale * sum_j dL/ds_ij k_j,  dk_j = scale * sum_i dL/ds_ij q_i,  dscale = sum dL/ds_ij <q_i, k_j>
"""

from __future__ import annotations

import torch

from kernels.contrastive.spec import LabelCodes, LossOptions, pair_rules


def _chunk_terms(q: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, start: int, offset: int,
                 rows: LabelCodes | None, key_codes: LabelCodes | None, opts: LossOptions):
    dot = q @ keys.T
    s = scale * dot
    i = torch.arange(start, start + q.shape[0], device=q.device)[:, None]
    j = torch.arange(keys.shape[0], device=q.device)[None, :]
    positive, weight = pair_rules(i, j, offset, rows, key_codes, opts)
    return dot, s, positive, weight


class ChunkedDirection(torch.autograd.Function):
    """Mean over rows of L_i for queries q against keys (+ a queue that gets no gradient)."""

    @staticmethod
    def forward(ctx, q, k, queue, scale, rows, key_codes, offset, opts, chunk):
        keys = (torch.cat([k, queue.to(k.dtype)]) if queue is not None else k).float()
        qf, sf = q.float(), scale.float()
        lse = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
        count = torch.empty_like(lse)
        total = torch.zeros((), dtype=torch.float32, device=q.device)
        for start in range(0, q.shape[0], chunk):
            _, s, positive, weight = _chunk_terms(qf[start:start + chunk], keys, sf, start, offset, rows,
                                                  key_codes, opts)
            lse_c = torch.logsumexp(s + torch.log(weight), dim=1)  # log 0 = -inf drops excluded pairs
            count_c = positive.sum(1).float()
            total += (lse_c - (s * positive).sum(1) / count_c).sum()
            lse[start:start + chunk], count[start:start + chunk] = lse_c, count_c
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
            dot, s, positive, weight = _chunk_terms(q_c, keys, sf, start, offset, rows, key_codes, opts)
            # log w = -inf makes excluded pairs exactly 0 even where exp(s - lse) alone would overflow
            p = torch.exp(s + torch.log(weight) - lse[start:start + chunk, None])
            ds = g * (p - positive / count[start:start + chunk, None])
            dq[start:start + chunk] = sf * (ds @ keys)
            dk += sf * (ds[:, :n_grad].T @ q_c)
            dscale += (ds * dot).sum()
        return (dq.to(q.dtype), dk.to(k.dtype), None, dscale.reshape(scale.shape).to(scale.dtype),
                None, None, None, None, None)


def chunked_direction(q, k, queue, scale, rows, key_codes, offset, opts, chunk: int = 1024) -> torch.Tensor:
    return ChunkedDirection.apply(q, k, queue, scale, rows, key_codes, offset, opts, chunk)
