"""The objective contract: a small callable that turns (model, batch) into named scalar loss terms.

    terms = objective(model, batch)            # {"contrastive": tensor(...)}, or more terms for richer methods
    loss = weighted_total(terms, weights)      # the trainer sums them and logs each term

`model` is the bare RetinaCLIP (never the DeepSpeed engine: the trainer unwraps it); an objective computes
losses only. The model owns every module it runs (the caption decoder is a model option); training-only
modules an objective needs are declared by `auxiliary_modules` and added by the trainer under
`model.auxiliary` (pretrain.model.add_auxiliary).

A batch is the dict made by `pretrain.data.Collate`, or a `(public, elite)` pair of them (KeepFIT-style
data): a pair is concatenated into one batch before embedding, so every sample of both sets is a key for
every query, as if the two streams had been drawn as one batch (KeepFIT V1's `separate_forwards` embeds each
stream in its own call instead, as its release does). Objectives never build a B x B logits
matrix themselves: they call `kernels.distributed_contrastive_loss`, which is the plain fused loss in one
process and gathers keys with gradient under torch.distributed; the model stays parallelism-agnostic.

Collapse diagnostic. Each call also leaves `objective.diagnostics`: for every loss term, the mean pairwise
cosine of the image and of the text embeddings it was computed from (`cos_image/<term>`, `cos_text/<term>`;
`mean_pairwise_cosine`). Near 1, every sample maps to the same point (collapse: a contrastive term then sits
at ln(batch)); a learning run stays well below. The trainer logs them with the loss terms; they are never
summed into the loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Batch = Mapping[str, Any]
PairedBatch = tuple[Batch, Batch]

# Tensors a paired batch concatenates; 2-d ones are zero-padded on the last dim first (pad id 0 under a
# zero attention mask is never attended; a zero multi-hot column is an absent label).
PAIRED_TENSORS = ("image", "input_ids", "attention_mask", "category_ids", "multi_hot")


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() == 2 and a.shape[1] != b.shape[1]:
        width = max(a.shape[1], b.shape[1])
        a, b = (F.pad(t, (0, width - t.shape[1])) for t in (a, b))
    return torch.cat([a, b.to(a.dtype)])


def merge_batches(public: Batch, elite: Batch) -> dict[str, Any]:
    """One batch holding `public` then `elite`: tensors in PAIRED_TENSORS concatenated, lists joined."""
    merged: dict[str, Any] = {}
    for key in public.keys() & elite.keys():
        a, b = public[key], elite[key]
        if key in PAIRED_TENSORS:
            merged[key] = _cat(a, b)
        elif isinstance(a, list) and isinstance(b, list):
            merged[key] = a + b
    return merged


def as_batch(batch: Batch | PairedBatch) -> Batch:
    """A batch as is; a (public, elite) pair merged into one. The pair may arrive as a list: torch's DataLoader
    (default_convert, with batch_size=None) turns the data pipeline's tuples into lists."""
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise ValueError(f"a paired batch is (public, elite), got a sequence of {len(batch)}")
        return merge_batches(*batch)
    return batch


def embed(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image_embeds, text_embeds, logit_scale) of the model on a batch; embeddings are L2-normalised."""
    out = model(pixel_values=batch["image"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out["image_embeds"], out["text_embeds"], out["logit_scale"]


def mean_pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine over the n (n - 1) ordered pairs of distinct rows of x (n, D), detached, in float32: from
    |sum of unit rows|^2 = n + sum_{i != j} cos_ij, so O(n D). 1 = all rows point the same way; about 0 for
    random directions; NaN for fewer than 2 rows."""
    unit = F.normalize(x.detach().float(), dim=-1)
    n = unit.shape[0]
    if n < 2:
        return torch.tensor(float("nan"), device=x.device)
    total = unit.sum(dim=0)
    return (total.dot(total) - n) / (n * (n - 1))


class Objective(ABC):
    """Maps (model, batch or (public, elite) pair) to named scalar loss terms."""

    name: str
    diagnostics: dict[str, torch.Tensor]

    def note_spread(self, term: str, image: torch.Tensor | None, text: torch.Tensor | None) -> None:
        """Record the collapse diagnostic of a loss term's inputs (this rank's rows; None = not an input)."""
        if not hasattr(self, "diagnostics"):
            self.diagnostics = {}
        for side, x in (("image", image), ("text", text)):
            if x is not None:
                self.diagnostics[f"cos_{side}/{term}"] = mean_pairwise_cosine(x)

    def auxiliary_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Training-only modules this method needs beside the model (revision attention, momentum encoders,
        queues as buffers), by name; the trainer adds them under model.auxiliary before the engine wraps the
        model, so DeepSpeed optimises, partitions and checkpoints them with everything else. Default: none."""
        return {}

    @abstractmethod
    def __call__(self, model: nn.Module, batch: Batch | PairedBatch) -> dict[str, torch.Tensor]:
        ...
