"""Every contrastive variant, composed of log-sum-exp stripes (the kernels) and positive terms (positives.py).

A *stripe* is rows q (M, D) against keys k (N, D): it returns each row's log-sum-exp over the keys and,
on request, each key's (column's) log-sum-exp over the rows, both from one set of similarity tiles, and
its backward takes the upstream gradients of both (chunked.py, triton_stripe.py).

**Square** (images x texts of one process, any label option): one stripe with columns serves both
directions, since every rule of spec.py is symmetric, so the text->image scores are the transpose of the
image->text ones:

    L = 1/2 [ mean_i (row_lse_i - a_i / c_i) + mean_j (col_lse_j - a'_j / c'_j) ]

**Distributed** (this rank's M images against all N = W M texts, gathered with gradient, offset
rank * M): the same stripe; each text's column log-sum-exp is completed with the other ranks' rows by
`merge_columns` (a log-sum-exp all-reduce whose backward all-reduces the gradients), and the column
targets a'_j / c'_j are attributed to the rank holding row i (sum_j P_ij s_ij / c'_j), so the per-rank
losses and their gradients sum to the global ones (the images are never gathered).

**Queues** (keys without gradient): text queue keys extend every image row; image queue keys extend
this rank's text columns. They are rectangular strips, merged with logaddexp; they cannot share tiles
with the batch (other operands).

**Rectangular** (explicit image and text keys, no merge): the two directions are different products,
so each is its own stripe without columns.

Products per forward + backward, one = a rows x keys x D multiply-add sweep:

| case | products | extra memory (beyond inputs and gradients) |
|---|---|---|
| square, B x B | 4 (forward 1; backward: recompute 1, dq 1, dk 1) | column partials + one dS row chunk (triton) / a few (chunk, B) fp32 buffers (chunked) |
| distributed, per rank M x N | 4 | the same over N keys; 3 all-reduces of N floats |
| + queues of Q, per queue | 3 M x Q (forward 1; recompute 1, dq 1; no dk) | the same over Q keys |
| rectangular | 8 (4 per direction) | the same, twice |
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.contrastive.positives import positive_sets, positive_sum
from kernels.contrastive.spec import LabelCodes, LossOptions

# stripe(q, k, scale, rows, keys, offset, opts, columns) -> (row_lse (M,), col_lse (N,) or empty)
Stripe = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def queue_terms(q: torch.Tensor, queue: torch.Tensor, scale: torch.Tensor, rows: LabelCodes | None,
                queue_codes: LabelCodes | None, opts: LossOptions, stripe: Stripe):
    """(lse, positive sum, positive count) of rows q against queue keys: no true pair, no key gradient."""
    lse, _ = stripe(q, queue, scale, rows, queue_codes, None, opts, False)
    sets = positive_sets(q.shape[0], queue.shape[0], None, rows, queue_codes, opts, q.device)
    return lse, positive_sum(q, queue, scale, sets), sets.count


def direction_loss(q: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor | None, scale: torch.Tensor,
                   rows: LabelCodes | None, key_codes: LabelCodes | None, queue_codes: LabelCodes | None,
                   offset: int, opts: LossOptions, stripe: Stripe) -> torch.Tensor:
    """mean_i L_i of one direction: queries q against keys (+ a queue)."""
    lse, _ = stripe(q, keys, scale, rows, key_codes, offset, opts, False)
    sets = positive_sets(q.shape[0], keys.shape[0], offset, rows, key_codes, opts, q.device)
    positive, count = positive_sum(q, keys, scale, sets), sets.count
    if queue is not None:
        queue_lse, queue_positive, queue_count = queue_terms(q, queue, scale, rows, queue_codes, opts, stripe)
        lse = torch.logaddexp(lse, queue_lse)
        positive, count = positive + queue_positive, count + queue_count
    return (lse - positive / count).mean()


def symmetric_loss(image: torch.Tensor, text: torch.Tensor, text_keys: torch.Tensor, scale: torch.Tensor,
                   key_codes: LabelCodes | None, offset: int, opts: LossOptions, stripe: Stripe, *,
                   image_queue: torch.Tensor | None = None, text_queue: torch.Tensor | None = None,
                   queue_codes: LabelCodes | None = None,
                   merge_columns: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Both directions from one stripe of the M local images against every text (text_keys, offset)."""
    m, n = image.shape[0], text_keys.shape[0]
    local = slice(offset, offset + m)
    rows = None if key_codes is None else key_codes.rows(local)
    row_lse, col_lse = stripe(image, text_keys, scale, rows, key_codes, offset, opts, True)
    if merge_columns is not None:
        col_lse = merge_columns(col_lse)
    col_lse = col_lse[local]
    row_sets = positive_sets(m, n, offset, rows, key_codes, opts, image.device)
    # c'_j: text j's positives among every image of the (global) square, i.e. its own row count there
    col_count = row_sets.count if n == m else positive_sets(n, n, 0, key_codes, key_codes, opts,
                                                            image.device).count
    row_positive, row_count = positive_sum(image, text_keys, scale, row_sets), row_sets.count
    queue_column_target = image.new_zeros((), dtype=torch.float32)
    if text_queue is not None:
        queue_lse, queue_positive, queue_count = queue_terms(image, text_queue, scale, rows, queue_codes, opts,
                                                             stripe)
        row_lse = torch.logaddexp(row_lse, queue_lse)
        row_positive, row_count = row_positive + queue_positive, row_count + queue_count
    if image_queue is not None:
        queue_lse, queue_positive, _ = queue_terms(text, image_queue, scale, rows, queue_codes, opts, stripe)
        col_lse = torch.logaddexp(col_lse, queue_lse)
        col_count = col_count + positive_sets(n, image_queue.shape[0], None, key_codes, queue_codes, opts,
                                              image.device).count
        queue_column_target = (queue_positive / col_count[local]).sum()
    column_target = positive_sum(image, text_keys, scale, row_sets, key_weight=1.0 / col_count).sum()
    row_loss = (row_lse - row_positive / row_count).mean()
    column_loss = (col_lse.sum() - column_target - queue_column_target) / m
    return (row_loss + column_loss) / 2
