"""`contrastive_loss`: the one entry to every contrastive variant the methods need.

    loss = contrastive_loss(image_emb, text_emb, logit_scale)                       # CLIP / InfoNCE
    loss = contrastive_loss(img, txt, scale, labels=class_ids, positives="labels")  # FLAIR soft targets
    loss = contrastive_loss(img, txt, scale, labels=pack_multi_hot(multi_hot),
                            exclude_false_negatives=True, weighting="jaccard",
                            image_queue=iq, text_queue=tq, queue_labels=ql)         # ViLReF-style

The math of every option is in `kernels.contrastive.spec`. Rectangular problems (local queries
against gathered keys) take `image_keys`, `text_keys`, `key_labels` and the `offset` of the local
block; `kernels.contrastive.distributed` fills them in from torch.distributed. Backends: "triton"
(CUDA, or the CPU interpreter under TRITON_INTERPRET=1), "chunked" (pure torch, any device),
"eager" (dense matrices, the benchmark baseline). The default picks, on CUDA, eager while the dense
similarity matrix is small (at most EAGER_MAX_PAIRS query-key pairs; cuBLAS beats our Triton kernel there,
benchmarks/results/gpu-h100-notes.md) and triton above it, where memory decides; chunked elsewhere.
"""

from __future__ import annotations

import os

import torch

from kernels.contrastive.chunked import chunked_direction
from kernels.contrastive.reference import reference_contrastive_loss
from kernels.contrastive.spec import LabelCodes, LossOptions, label_codes, pack_multi_hot

BACKENDS = ("triton", "chunked", "eager")


def triton_usable(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


# 4096 x 8192 pairs: the eager path's few dense (M, N) fp32 temporaries stay under ~1 GB.
EAGER_MAX_PAIRS = 4096 * 8192


def resolve_backend(backend: str | None, device: torch.device, pairs: int = 0) -> str:
    """The backend to run: `backend` if it can run here, or the default for `pairs` (M x N incl. queue)."""
    if backend is None:
        if device.type != "cuda":
            return "chunked"
        if pairs <= EAGER_MAX_PAIRS:
            return "eager"
        return "triton" if triton_usable(device) else "chunked"
    if backend not in BACKENDS:
        raise ValueError(f"unknown contrastive backend {backend!r}; expected one of {BACKENDS}")
    if backend == "triton" and not triton_usable(device):
        raise RuntimeError("the triton contrastive backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                           "kernels are imported, for CPU testing); use backend='chunked' here")
    return backend


def as_label_tensor(labels: torch.Tensor) -> torch.Tensor:
    """Class ids stay as they are; a dense multi-hot matrix is packed into int32 bit words."""
    if labels.dim() == 2 and labels.dtype != torch.int32:
        return pack_multi_hot(labels)
    return labels


def _unpack_words(words: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    return ((words.to(torch.int64)[:, :, None] >> shifts) & 1).reshape(words.shape[0], -1)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float, *,
                     labels: torch.Tensor | None = None, positives: str = "identity",
                     exclude_false_negatives: bool = False, weighting: str | None = None, alpha: float = 0.5,
                     image_keys: torch.Tensor | None = None, text_keys: torch.Tensor | None = None,
                     key_labels: torch.Tensor | None = None, offset: int = 0,
                     image_queue: torch.Tensor | None = None, text_queue: torch.Tensor | None = None,
                     queue_labels: torch.Tensor | None = None, backend: str | None = None,
                     chunk_size: int = 1024) -> torch.Tensor:
    """Symmetric contrastive loss: the mean of the image->text and text->image directions.

    image_emb, text_emb: (M, D) local queries (normalise them first, as CLIP does).
    logit_scale: the multiplier of the similarities (CLIP's `logit_scale.exp()`), a tensor with a gradient.
    labels: class ids (M,) int, a multi-hot (M, C) matrix, or packed int32 words (M, W).
    image_keys, text_keys: (N, D) keys when they differ from the queries (a gathered global batch);
    the local block starts at key `offset`. Queues: (Q, D) extra keys without gradient.
    """
    opts = LossOptions(positives, exclude_false_negatives, weighting, alpha)
    image_keys = image_emb if image_keys is None else image_keys
    text_keys = text_emb if text_keys is None else text_keys
    m, n = image_emb.shape[0], image_keys.shape[0]
    if text_emb.shape[0] != m or text_keys.shape[0] != n:
        raise ValueError(f"image and text must pair up: queries {m} vs {text_emb.shape[0]}, "
                         f"keys {n} vs {text_keys.shape[0]}")
    if not 0 <= offset <= n - m:
        raise ValueError(f"offset {offset} puts the {m} local rows outside the {n} keys")
    dims = {t.shape[1] for t in (image_emb, text_emb, image_keys, text_keys) if t is not None}
    dims |= {t.shape[1] for t in (image_queue, text_queue) if t is not None}
    if len(dims) != 1:
        raise ValueError(f"every embedding must have the same dimension, got {sorted(dims)}")
    scale = logit_scale if torch.is_tensor(logit_scale) else torch.tensor(float(logit_scale), device=image_emb.device)
    if opts.needs_labels and labels is None:
        raise ValueError("positives='labels', exclude_false_negatives and weighting need `labels`")
    if opts.needs_labels and (image_queue is not None or text_queue is not None) and queue_labels is None:
        raise ValueError("label-aware options with a queue need `queue_labels`")
    labels = as_label_tensor(labels) if opts.needs_labels else None
    key_labels = labels if key_labels is None or labels is None else as_label_tensor(key_labels)
    queue_labels = as_label_tensor(queue_labels) if opts.needs_labels and queue_labels is not None else None

    queue_len = max((0 if t is None else t.shape[0]) for t in (image_queue, text_queue))
    backend = resolve_backend(backend, image_emb.device, pairs=m * (n + queue_len))
    if backend == "eager":
        dense = (lambda x: x if x is None or x.dim() == 1 else _unpack_words(x))
        return reference_contrastive_loss(image_emb, text_emb, scale, labels=dense(labels), opts=opts,
                                          image_keys=image_keys, text_keys=text_keys, key_labels=dense(key_labels),
                                          offset=offset, image_queue=image_queue, text_queue=text_queue,
                                          queue_labels=dense(queue_labels), dtype=None)
    if backend == "triton":
        from kernels.contrastive.triton_direction import triton_direction as direction
    else:
        def direction(q, k, queue, s, rows, keys, off, o):
            return chunked_direction(q, k, queue, s, rows, keys, off, o, chunk_size)

    rows = label_codes(labels) if labels is not None else None
    keys = label_codes(key_labels) if key_labels is not None else None

    def key_codes(queue: torch.Tensor | None) -> LabelCodes | None:
        if keys is None or queue is None:
            return keys
        return keys.cat(label_codes(queue_labels))

    image_queue = None if image_queue is None else image_queue.detach()
    text_queue = None if text_queue is None else text_queue.detach()
    i2t = direction(image_emb, text_keys, text_queue, scale, rows, key_codes(text_queue), offset, opts)
    t2i = direction(text_emb, image_keys, image_queue, scale, rows, key_codes(image_queue), offset, opts)
    return (i2t + t2i) / 2


__all__ = ["contrastive_loss", "pack_multi_hot", "reference_contrastive_loss", "resolve_backend", "LossOptions",
           "BACKENDS", "EAGER_MAX_PAIRS"]
