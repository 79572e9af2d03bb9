"""CLIP / InfoNCE: each image's positive is its own caption, and vice versa."""

from __future__ import annotations

import torch
from torch import nn

from kernels import distributed_contrastive_loss
from pretrain.objectives.base import Batch, Objective, PairedBatch, as_batch, embed


class ClipObjective(Objective):
    name = "clip"

    def __init__(self, backend: str | None = None) -> None:
        self.backend = backend  # None: kernels.contrastive.resolve_backend chooses by device and size

    def __call__(self, model: nn.Module, batch: Batch | PairedBatch) -> dict[str, torch.Tensor]:
        image, text, scale = embed(model, as_batch(batch))
        self.note_spread("contrastive", image, text)
        return {"contrastive": distributed_contrastive_loss(image, text, scale, backend=self.backend)}
