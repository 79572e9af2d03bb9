"""The dense eager reference: every M x N matrix materialised, autograd for gradients.

Written independently of the tiled paths (labels as class ids or dense multi-hot rows, weights
from dense set algebra) so that tests compare two different computations. In float64 it is the
test oracle; in the inputs' dtype it is the "eager torch" baseline of the benchmark.
"""

from __future__ import annotations

import torch

from kernels.contrastive.spec import LossOptions


def _same_and_sim(a: torch.Tensor, b: torch.Tensor, weighting: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if a.dim() == 1:  # class ids; negative = no label
        same = (a[:, None] == b[None, :]) & (a[:, None] >= 0) & (b[None, :] >= 0)
        return same, same.double()
    a, b = a.double(), b.double()
    inter = a @ b.T
    size_a, size_b = a.sum(1, keepdim=True), b.sum(1, keepdim=True).T
    same = (size_a > 0) & (size_b > 0) & (inter == size_a) & (inter == size_b)
    if weighting == "cosine":
        denom = torch.sqrt(size_a * size_b)
    else:
        denom = size_a + size_b - inter
    sim = torch.where(denom > 0, inter / denom.clamp_min(1e-30), torch.zeros_like(inter))
    return same, sim


def reference_direction(q, keys, scale, offset, row_labels, key_labels, opts: LossOptions, dtype) -> torch.Tensor:
    s = scale.to(dtype) * (q.to(dtype) @ keys.to(dtype).T)
    m, n = s.shape
    positive = torch.zeros(m, n, dtype=torch.bool, device=s.device)
    positive[torch.arange(m), torch.arange(m) + offset] = True
    log_w = torch.zeros_like(s)
    if opts.needs_labels:
        same, sim = _same_and_sim(row_labels, key_labels, opts.weighting)
        if opts.positives == "labels":
            positive |= same
        if opts.weighting is not None:
            log_w = torch.log((1.0 - opts.alpha * sim).to(dtype))
        if opts.exclude_false_negatives:
            log_w = log_w.masked_fill(same, float("-inf"))
        log_w = log_w.masked_fill(positive, 0.0)
    targets = positive.to(dtype) / positive.sum(1, keepdim=True)
    return (torch.logsumexp(s + log_w, dim=1) - (targets * s).sum(1)).mean()


def reference_contrastive_loss(image_emb, text_emb, logit_scale, *, labels=None, opts: LossOptions = LossOptions(),
                               image_keys=None, text_keys=None, key_labels=None, offset: int = 0,
                               image_queue=None, text_queue=None, queue_labels=None,
                               dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """Symmetric loss. `labels`: class ids (B,) or dense multi-hot (B, C) 0/1. dtype None: the inputs' dtype."""
    dtype = dtype or image_emb.dtype
    image_keys = image_emb if image_keys is None else image_keys
    text_keys = text_emb if text_keys is None else text_keys
    key_labels = labels if key_labels is None else key_labels

    def with_queue(keys, queue, lab):
        if queue is None:
            return keys, lab
        return torch.cat([keys, queue.detach().to(keys.dtype)]), (None if lab is None else torch.cat([lab, queue_labels]))

    text_all, text_lab = with_queue(text_keys, text_queue, key_labels)
    image_all, image_lab = with_queue(image_keys, image_queue, key_labels)
    scale = torch.as_tensor(logit_scale, device=image_emb.device)
    i2t = reference_direction(image_emb, text_all, scale, offset, labels, text_lab, opts, dtype)
    t2i = reference_direction(text_emb, image_all, scale, offset, labels, image_lab, opts, dtype)
    return (i2t + t2i) / 2
