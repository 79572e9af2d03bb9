"""`contrastive_loss`: the one entry to every contrastive variant the methods need.

    loss = contrastive_loss(image_emb, text_emb, logit_scale)                       # CLIP / InfoNCE
    loss = contrastive_loss(img, txt, scale, labels=class_ids, positives="labels")  # FLAIR soft targets
    loss = contrastive_loss(img, txt, scale, labels=pack_multi_hot(multi_hot),
                            exclude_false_negatives=True, weighting="jaccard",
                            image_queue=iq, text_queue=tq, queue_labels=ql)         # ViLReF-style

The math of every option is in `kernels.contrastive.spec`; how each case is computed (one stripe of
similarity tiles serving both directions, products and memory per case) in `kernels.contrastive.compose`.
Rectangular problems (local queries against other keys) take `image_keys`, `text_keys`, `key_labels` and
the `offset` of the local block; `kernels.contrastive.distributed` passes only `text_keys` (every rank's
texts) with `merge_columns`, so that one stripe serves both directions across processes too.

Backends: "triton" (CUDA, or the CPU interpreter under TRITON_INTERPRET=1), "chunked" (pure torch, any
device), "eager" (dense matrices, the benchmark baseline). The default picks chunked off CUDA (on CPU it is
1.5x faster than open_clip and 2.5-3.6x faster than eager at B = 4096-8192, benchmarks/results/contrastive-cpu.json)
and, on CUDA, eager while the dense similarity matrix is small (at most EAGER_MAX_PAIRS query-key pairs;
cuBLAS beat the v1 Triton kernels there, benchmarks/results/gpu-h100-notes.md; the v2 stripe kernels are not
yet measured on a GPU, benchmarks/gpu_session.sh does it) and triton above it, where memory decides.
"""

from __future__ import annotations

import functools
import os

import torch

from kernels.contrastive.chunked import chunked_stripe
from kernels.contrastive.compose import direction_loss, symmetric_loss
from kernels.contrastive.reference import reference_contrastive_loss
from kernels.contrastive.spec import LabelCodes, LossOptions, label_codes, pack_multi_hot, unpack_multi_hot

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


def stripe_function(backend: str, chunk_size: int):
    """stripe(q, k, scale, rows, keys, offset, opts, columns) of a backend (see compose.py)."""
    if backend == "triton":
        from kernels.contrastive.triton_stripe import triton_stripe

        return triton_stripe
    return functools.partial(chunked_stripe, chunk=chunk_size)


def _check_shapes(image_emb, text_emb, image_keys, text_keys, offset, queues):
    m = image_emb.shape[0]
    n = (text_keys if text_keys is not None else text_emb).shape[0]
    if text_emb.shape[0] != m or (image_keys is not None and image_keys.shape[0] != n):
        raise ValueError(f"image and text must pair up: queries {m} vs {text_emb.shape[0]}, keys "
                         f"{n if image_keys is None else image_keys.shape[0]} vs {n}")
    if not 0 <= offset <= n - m:
        raise ValueError(f"offset {offset} puts the {m} local rows outside the {n} keys")
    tensors = (image_emb, text_emb, image_keys, text_keys, *queues)
    dims = {t.shape[1] for t in tensors if t is not None}
    if len(dims) != 1:
        raise ValueError(f"every embedding must have the same dimension, got {sorted(dims)}")


def _eager_loss(image_emb, text_emb, scale, labels, opts, image_keys, text_keys, key_labels, offset,
                image_queue, text_queue, queue_labels):
    dense = (lambda x: x if x is None or x.dim() == 1 else unpack_multi_hot(x))
    return reference_contrastive_loss(image_emb, text_emb, scale, labels=dense(labels), opts=opts,
                                      image_keys=image_keys, text_keys=text_keys, key_labels=dense(key_labels),
                                      offset=offset, image_queue=image_queue, text_queue=text_queue,
                                      queue_labels=dense(queue_labels), dtype=None)


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float, *,
                     labels: torch.Tensor | None = None, positives: str = "identity",
                     exclude_false_negatives: bool = False, weighting: str | None = None, alpha: float = 0.5,
                     image_keys: torch.Tensor | None = None, text_keys: torch.Tensor | None = None,
                     key_labels: torch.Tensor | None = None, offset: int = 0,
                     image_queue: torch.Tensor | None = None, text_queue: torch.Tensor | None = None,
                     queue_labels: torch.Tensor | None = None, backend: str | None = None,
                     chunk_size: int = 1024, merge_columns=None) -> torch.Tensor:
    """Symmetric contrastive loss: the mean of the image->text and text->image directions.

    image_emb, text_emb: (M, D) local queries (normalise them first, as CLIP does).
    logit_scale: the multiplier of the similarities (CLIP's `logit_scale.exp()`), a tensor with a gradient.
    labels: class ids (M,) int, a multi-hot (M, C) matrix, or packed int32 words (M, W).
    image_keys, text_keys: (N, D) keys when they differ from the queries (a gathered global batch);
    the local block starts at key `offset`. Queues: (Q, D) extra keys without gradient.
    text_keys alone (no image_keys) is the distributed form: `merge_columns` must complete each text's
    log-sum-exp with the other processes' images (kernels.distributed_contrastive_loss does this).
    """
    opts = LossOptions(positives, exclude_false_negatives, weighting, alpha)
    if text_keys is not None and image_keys is None and merge_columns is None:
        raise ValueError("text_keys without image_keys is the distributed form and needs merge_columns; pass "
                         "both image_keys and text_keys for a rectangular problem")
    if image_keys is not None and text_keys is None:
        raise ValueError("image_keys needs text_keys")
    _check_shapes(image_emb, text_emb, image_keys, text_keys, offset, (image_queue, text_queue))
    scale = logit_scale if torch.is_tensor(logit_scale) else torch.tensor(float(logit_scale), device=image_emb.device)
    if opts.needs_labels and labels is None:
        raise ValueError("positives='labels', exclude_false_negatives and weighting need `labels`")
    if opts.needs_labels and (image_queue is not None or text_queue is not None) and queue_labels is None:
        raise ValueError("label-aware options with a queue need `queue_labels`")
    labels = as_label_tensor(labels) if opts.needs_labels else None
    key_labels = labels if key_labels is None or labels is None else as_label_tensor(key_labels)
    queue_labels = as_label_tensor(queue_labels) if opts.needs_labels and queue_labels is not None else None
    # a snapshot without gradient: callers (ViLReF) update their queues in place before the backward runs, and
    # the backward recomputes the weights from the labels, so the labels are copied too (a packed label buffer
    # passes through as_label_tensor as itself; rewritten under the backward, its weights left [0, 1] and NaN'd)
    image_queue = None if image_queue is None else image_queue.detach().clone()
    text_queue = None if text_queue is None else text_queue.detach().clone()
    queue_labels = None if queue_labels is None else queue_labels.clone()

    m = image_emb.shape[0]
    n = m if text_keys is None else text_keys.shape[0]
    queue_len = max((0 if t is None else t.shape[0]) for t in (image_queue, text_queue))
    backend = resolve_backend(backend, image_emb.device, pairs=m * (n + queue_len))
    if backend == "eager":
        if merge_columns is not None:
            raise ValueError("the eager backend takes the rectangular form (image_keys and text_keys), "
                             "not merge_columns")
        return _eager_loss(image_emb, text_emb, scale, labels, opts, image_keys, text_keys, key_labels, offset,
                           image_queue, text_queue, queue_labels)

    stripe = stripe_function(backend, chunk_size)
    rows = label_codes(labels) if labels is not None else None
    keys = label_codes(key_labels) if key_labels is not None else None
    queue_codes = label_codes(queue_labels) if queue_labels is not None else None
    if image_keys is not None:
        i2t = direction_loss(image_emb, text_keys, text_queue, scale, rows, keys, queue_codes, offset, opts, stripe)
        t2i = direction_loss(text_emb, image_keys, image_queue, scale, rows, keys, queue_codes, offset, opts,
                             stripe)
        return (i2t + t2i) / 2
    text_keys = text_emb if text_keys is None else text_keys
    return symmetric_loss(image_emb, text_emb, text_keys, scale, keys, offset, opts, stripe,
                          image_queue=image_queue, text_queue=text_queue, queue_codes=queue_codes,
                          merge_columns=merge_columns)


__all__ = ["contrastive_loss", "pack_multi_hot", "reference_contrastive_loss", "resolve_backend", "LossOptions",
           "LabelCodes", "BACKENDS", "EAGER_MAX_PAIRS"]
