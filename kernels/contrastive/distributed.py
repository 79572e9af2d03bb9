"""The contrastive loss across processes: this rank's rows against the globally gathered batch.

Each rank computes one stripe: its M local images against all W*M texts (gathered with gradient, the
local block at offset = rank * M). The stripe's row log-sum-exps give the image->text direction of the
local rows; its column log-sum-exps, merged over ranks by a log-sum-exp all-reduce, give every text's
text->image denominator; so one set of similarity tiles serves both directions and the images are never
gathered (kernels.contrastive.compose). The gather's backward sums every rank's key gradient back to
the owner and the merge's backward all-reduces the column gradients, so after the data-parallel average
of gradients (DDP, DeepSpeed) this is the single-process loss on the concatenated batch: open_clip's
`local_loss=True, gather_with_grad=True`, with the same embedding gradients on every rank. Each rank's
loss value is its share of the global loss (the mean over ranks is the global loss; with identity
positives it equals open_clip's per-rank value); the logit-scale gradient is exact after the average.
The eager backend gathers both sides and runs the two directions densely. Every rank must hold the same
number of samples.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kernels.contrastive import as_label_tensor, contrastive_loss, resolve_backend


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns the sum over ranks of the gradient of this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        group = ctx.group
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        grad = grad.contiguous()
        if dist.get_backend(group) == dist.Backend.NCCL:
            out = torch.empty((grad.shape[0] // world, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, group=group)
            return out, None
        dist.all_reduce(grad, group=group)  # gloo has no reduce_scatter: reduce everything, keep our slice
        return grad.chunk(world)[rank].clone(), None


def gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    return _GatherWithGrad.apply(x, group)


def gather(x: torch.Tensor, group=None) -> torch.Tensor:
    out = torch.empty((dist.get_world_size(group) * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous(), group=group)
    return out


class _LogSumExpAllReduce(torch.autograd.Function):
    """log sum_r exp(x_r) over ranks, elementwise; backward: the summed upstream gradient times softmax weights."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        peak = x.detach().clone()
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        shift = torch.where(torch.isinf(peak), 0.0, peak)  # a column no rank keeps stays -inf, without NaN
        total = torch.exp(x.detach() - shift)
        dist.all_reduce(total, group=group)
        out = shift + torch.log(total)
        ctx.save_for_backward(x, out)
        ctx.group = group
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, out = ctx.saved_tensors
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # every rank's loss depends on every rank's partial
        weight = torch.where(torch.isinf(x), 0.0, torch.exp(x - out))
        return grad * weight, None


def logsumexp_all_reduce(x: torch.Tensor, group=None) -> torch.Tensor:
    return _LogSumExpAllReduce.apply(x, group)


def distributed_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale, *,
                                 labels: torch.Tensor | None = None, group=None, **options) -> torch.Tensor:
    """`contrastive_loss` of this rank's rows against the whole gathered batch (plain call when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return contrastive_loss(image_emb, text_emb, logit_scale, labels=labels, **options)
    given = sorted({"image_keys", "text_keys", "key_labels", "offset", "merge_columns"} & options.keys())
    if given:
        raise ValueError(f"distributed_contrastive_loss gathers the keys itself; do not pass {given}")
    sizes = gather(torch.tensor([image_emb.shape[0]], device=image_emb.device), group)
    if (sizes != sizes[0]).any():
        raise ValueError(f"every rank must hold the same number of samples, got {sizes.tolist()}")
    if labels is not None:
        labels = as_label_tensor(labels)
    key_labels = None if labels is None else gather(labels, group)
    offset = dist.get_rank(group) * image_emb.shape[0]
    text_keys = gather_with_grad(text_emb, group)
    queue = options.get("image_queue") if options.get("image_queue") is not None else options.get("text_queue")
    pairs = image_emb.shape[0] * (text_keys.shape[0] + (0 if queue is None else queue.shape[0]))
    if resolve_backend(options.get("backend"), image_emb.device, pairs) == "eager":
        return contrastive_loss(image_emb, text_emb, logit_scale, labels=labels, key_labels=key_labels,
                                image_keys=gather_with_grad(image_emb, group), text_keys=text_keys,
                                offset=offset, **options)
    return contrastive_loss(image_emb, text_emb, logit_scale, labels=labels, key_labels=key_labels,
                            text_keys=text_keys, offset=offset,
                            merge_columns=lambda columns: logsumexp_all_reduce(columns, group), **options)
