"""ViLReF: label-aware contrastive pretraining with the Weighted Similarity Coupling Loss (WSCL).

Only the paper's abstract is public and the released code has no loss, so this is the abstract's recipe
in a principled, documented form; every step runs through `kernels.contrastive_loss`.

Labels. Each report is mapped to a multi-hot vector y in {0, 1}^C over the knowledge file's vocabulary
(`shards.knowledge`: synonyms, spelling, whole-word keywords; a negated finding is dropped, and negative
findings such as "no glaucoma" are labels of their own). `label_source: shard` uses the shard's stored
labels instead (for captioned sources these were extracted the same way at build time).

Loss. With unit embeddings v_i (image) and t_j (text), tau^-1 = the model's logit scale, label
similarity s_ij = <y_i, y_j> / (|y_i| |y_j|) (cosine of the label sets; 0 when either set is empty) and

    w_ij = 1                    j = i (the true pair)
    w_ij = 0                    y_i = y_j != {}   (a false negative: removed from the negatives)
    w_ij = 1 - alpha * s_ij     otherwise         (alpha in [0, 1], default 0.5)

the image->text row loss is

    L_i = -tau^-1 <v_i, t_i> + log sum_{j in B u Q_t} w_ij exp(tau^-1 <v_i, t_j>)

and text->image is the same with the roles swapped (keys: the batch's images and the image queue Q_v);
the loss is the mean of both directions over the global batch. A negative's push is proportional to its
weight, so w decreasing in s is what makes semantically close pairs move apart more slowly; identical
label sets are never pushed apart. This is `contrastive_loss(..., labels=y, positives="identity",
exclude_false_negatives=True, weighting="cosine", alpha=alpha)` (kernels.contrastive.spec), so `weighting:
jaccard` is the other similarity on offer.

Batch expansion. Removing false negatives leaves fewer negatives per row; momentum encoders (EMA of the
towers, `momentum` = 0.995) encode each batch once more without gradient and push (image, text, labels)
of the global batch into FIFO queues of `queue_size` entries, which join the keys of the next steps
(Q_v, Q_t above, with their labels, so they are weighted and excluded by the same rules). The batch keys
themselves come from the online encoders with gradient (CLIP-style), the queue from the momentum
encoders (MoCo-style, consistent over steps). Order per step: EMA update, loss against the queue as it
stands, then enqueue. ZeRO-3 handling of the EMA copies and queues: pretrain.objectives.momentum.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from kernels import distributed_contrastive_loss
from kernels.contrastive.spec import WEIGHTINGS
from pretrain.model import auxiliary
from pretrain.objectives.base import Batch, Objective, PairedBatch, as_batch, embed
from pretrain.objectives.momentum import FeatureQueue, MomentumEncoder, ema_update, gather_no_grad

LABEL_SOURCES = ("text", "shard")


@functools.lru_cache(maxsize=4)
def _knowledge(path: str | None):
    from shards.knowledge import load_knowledge

    return load_knowledge(path)


def extract_multi_hot(texts: list[str], knowledge: str | None = None) -> torch.Tensor:
    """(B, C) uint8 labels of free-text reports over the knowledge vocabulary (negation-aware)."""
    kb = _knowledge(knowledge)
    out = torch.zeros(len(texts), len(kb.vocabulary), dtype=torch.uint8)
    for row, text in enumerate(texts):
        out[row, kb.label_ids(kb.extract_labels(text))] = 1
    return out


class ViLReFObjective(Objective):
    name = "vilref"

    def __init__(self, alpha: float = 0.5, weighting: str = "cosine", exclude_false_negatives: bool = True,
                 queue_size: int = 1024, momentum: float = 0.995, label_source: str = "text",
                 knowledge: str | None = None, backend: str | None = None) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}, got {label_source!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.alpha, self.weighting, self.exclude = alpha, weighting, exclude_false_negatives
        self.queue_size, self.momentum = queue_size, momentum
        self.label_source, self.knowledge, self.backend = label_source, knowledge, backend

    @property
    def num_labels(self) -> int:
        return len(_knowledge(self.knowledge).vocabulary)

    def auxiliary_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.queue_size == 0:  # in-batch WSCL only, no momentum encoders needed
            return {}
        return {"momentum_encoder": MomentumEncoder(model),
                "feature_queue": FeatureQueue(self.queue_size, model.config.embed_dim, self.num_labels)}

    def labels(self, batch: Batch, device: torch.device) -> torch.Tensor:
        """(B, C) multi-hot labels of the batch, from its text or its shard labels."""
        if self.label_source == "text":
            return extract_multi_hot(list(batch["text"]), self.knowledge).to(device)
        multi_hot = batch["multi_hot"]
        if multi_hot.shape[1] > self.num_labels:
            raise ValueError(f"shard labels are {multi_hot.shape[1]}-wide, the knowledge vocabulary {self.num_labels}")
        return F.pad(multi_hot, (0, self.num_labels - multi_hot.shape[1])).to(device)

    def __call__(self, model: nn.Module, batch: Batch | PairedBatch) -> dict[str, torch.Tensor]:
        queue = auxiliary(model, "feature_queue") if self.queue_size > 0 else None
        encoder = auxiliary(model, "momentum_encoder") if self.queue_size > 0 else None
        batch = as_batch(batch)
        if encoder is not None and model.training:
            ema_update(model, encoder, self.momentum)
        image, text, scale = embed(model, batch)
        self.note_spread("contrastive", image, text)  # this step's batch; the queue holds older, EMA embeddings
        labels = self.labels(batch, image.device)
        stored = queue.contents() if queue is not None else None
        image_q, text_q, labels_q = stored if stored is not None else (None, None, None)
        loss = distributed_contrastive_loss(
            image, text, scale, labels=labels, positives="identity", exclude_false_negatives=self.exclude,
            weighting=self.weighting, alpha=self.alpha, image_queue=image_q, text_queue=text_q,
            queue_labels=labels_q, backend=self.backend)
        if queue is not None and encoder is not None and model.training:
            with torch.no_grad():
                image_m = encoder.get_image_features(batch["image"])
                text_m = encoder.get_text_features(batch["input_ids"], batch["attention_mask"])
            queue.enqueue(gather_no_grad(image_m.float()), gather_no_grad(text_m.float()),
                          gather_no_grad(labels.to(torch.int32)))
        return {"contrastive": loss}
