"""Momentum (EMA) copies of the towers and a FIFO feature queue, as MoCo/ALBEF keep them.

    encoder = MomentumEncoder(model)         # frozen deep copies of the towers and projections
    ema_update(model, encoder, m=0.995)      # theta_m <- m * theta_m + (1 - m) * theta, every step
    queue = FeatureQueue(size=1024, dim=512, num_labels=C)
    queue.enqueue(image_m, text_m, multi_hot) # oldest entries are overwritten first
    image_q, text_q, labels_q = queue.contents()

Both are training-only modules (model.auxiliary), added before DeepSpeed wraps the model, so they are
checkpointed with it.

ZeRO-3: the momentum copies are ordinary frozen parameters, so DeepSpeed partitions them exactly like the
online parameters (same shapes, hence the same flat layout); the EMA runs on the local partitions with no
communication (pretrain.engine.ema_parameters_, where every DeepSpeed detail lives). Their forward passes go
through DeepSpeed's module hooks like the online towers. Stages 0-2 replicate parameters: the EMA is on full
tensors, identical on every rank. The queue lives in buffers, which ZeRO never partitions: every rank holds
the same queue because it enqueues the gathered global batch.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from kernels.contrastive.spec import pack_multi_hot
from pretrain.engine import ema_parameters_, gather_persistent_parameters

PARTS = ("vision_model", "text_model", "visual_projection", "text_projection")


class MomentumEncoder(nn.Module):
    """Frozen copies of a RetinaCLIP's towers and projection heads (no logit scale: keys need none)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name in PARTS:
            setattr(self, name, copy.deepcopy(getattr(model, name)))
        self.requires_grad_(False)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        gather_persistent_parameters(self)
        return self.visual_projection(self.vision_model(pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        gather_persistent_parameters(self)
        return self.text_projection(self.text_model(input_ids, attention_mask))


def parameter_pairs(model: nn.Module, encoder: MomentumEncoder) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(online, momentum) parameter pairs, matched by name."""
    momentum = dict(encoder.named_parameters())
    pairs = []
    for part in PARTS:
        for name, param in getattr(model, part).named_parameters():
            pairs.append((param, momentum[f"{part}.{name}"]))
    return pairs


def ema_update(model: nn.Module, encoder: MomentumEncoder, m: float) -> None:
    """theta_m <- m * theta_m + (1 - m) * theta for every momentum parameter (any ZeRO stage)."""
    ema_parameters_(parameter_pairs(model, encoder), m)


class FeatureQueue(nn.Module):
    """A FIFO of (image, text, label) keys in buffers; entries never carry gradient.

    `ptr` is where the next entry goes and `count` how many slots hold real entries, so an unfilled queue
    contributes only what it has (no random placeholder keys whose labels would be meaningless)."""

    def __init__(self, size: int, dim: int, num_labels: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size, self.num_labels = size, num_labels
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("labels", torch.zeros(size, (num_labels + 31) // 32, dtype=torch.int32))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, multi_hot: torch.Tensor) -> None:
        """Write a batch at `ptr`, wrapping around; a batch larger than the queue keeps its last `size` rows."""
        image, text, multi_hot = image[-self.size:], text[-self.size:], multi_hot[-self.size:]
        n = image.shape[0]
        if multi_hot.shape[1] != self.num_labels:
            raise ValueError(f"queue labels are {self.num_labels}-wide, got {multi_hot.shape[1]}")
        ptr = int(self.ptr.item())
        index = (ptr + torch.arange(n, device=self.image.device)) % self.size
        self.image[index] = image.detach().to(self.image.dtype)
        self.text[index] = text.detach().to(self.text.dtype)
        self.labels[index] = pack_multi_hot(multi_hot).to(self.labels.device)
        self.ptr.fill_((ptr + n) % self.size)
        self.count.fill_(min(int(self.count.item()) + n, self.size))

    def contents(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(image, text, packed labels) of the filled slots, detached; None while empty."""
        n = int(self.count.item())
        if n == 0:
            return None
        return self.image[:n].detach(), self.text[:n].detach(), self.labels[:n]


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows concatenated in rank order (x itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = torch.empty((dist.get_world_size() * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous())
    return out
