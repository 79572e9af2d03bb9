"""FLAIR: the contrastive targets spread uniformly over every pair that shares the category.

With class ids (`category_ids`, -1 = none: such a sample matches only its own caption) this is FLAIR's
soft-target loss; `use_multi_hot` uses the `multi_hot` label sets instead (positives = identical sets).
"""

from __future__ import annotations

import torch
from torch import nn

from kernels import distributed_contrastive_loss
from pretrain.objectives.base import Batch, Objective, PairedBatch, as_batch, embed


class FlairObjective(Objective):
    name = "flair"

    def __init__(self, use_multi_hot: bool = False, backend: str | None = None) -> None:
        self.use_multi_hot = use_multi_hot
        self.backend = backend

    def __call__(self, model: nn.Module, batch: Batch | PairedBatch) -> dict[str, torch.Tensor]:
        batch = as_batch(batch)
        labels = batch["multi_hot"] if self.use_multi_hot else batch["category_ids"]
        image, text, scale = embed(model, batch)
        self.note_spread("contrastive", image, text)
        loss = distributed_contrastive_loss(image, text, scale, labels=labels, positives="labels",
                                            backend=self.backend)
        return {"contrastive": loss}
