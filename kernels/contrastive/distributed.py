"""The contrastive loss across processes: local queries against the globally gathered batch.

Each rank computes its M local rows against all W*M keys (offset = rank * M) and returns the mean
over its rows; the keys are gathered with gradient, so the gather's backward sums every rank's key
gradient back to the owner. After the data-parallel average of gradients (DDP, DeepSpeed) this is
the single-process loss on the concatenated batch: open_clip's `local_loss=True,
gather_with_grad=True`. Every rank must hold the same number of samples.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kernels.contrastive import as_label_tensor, contrastive_loss


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


def distributed_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale, *,
                                 labels: torch.Tensor | None = None, group=None, **options) -> torch.Tensor:
    """`contrastive_loss` of this rank's rows against the whole gathered batch (plain call when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return contrastive_loss(image_emb, text_emb, logit_scale, labels=labels, **options)
    sizes = gather(torch.tensor([image_emb.shape[0]], device=image_emb.device), group)
    if (sizes != sizes[0]).any():
        raise ValueError(f"every rank must hold the same number of samples, got {sizes.tolist()}")
    if labels is not None:
        labels = as_label_tensor(labels)
    return contrastive_loss(
        image_emb, text_emb, logit_scale, labels=labels,
        image_keys=gather_with_grad(image_emb, group), text_keys=gather_with_grad(text_emb, group),
        key_labels=None if labels is None else gather(labels, group),
        offset=dist.get_rank(group) * image_emb.shape[0], **options)
