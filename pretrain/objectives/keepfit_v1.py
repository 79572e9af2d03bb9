"""KeepFIT V1 (MM-Retinal, MICCAI 2024): mixed training plus image-similarity-guided text revision.

Every step sees a public batch P (categorical, FLAIR captions) and an elite batch E (expert captions),
i.e. `data.mix: paired`. With unit embeddings (v = image, t = text) from one forward of P u E:

    contrastive        FLAIR soft-target loss on P (positives: same category; `public_categories: false`
                       for identity positives)
    elite_contrastive  CLIP loss on E (each elite image matches its own caption)
    revision           weight * MSE(t_P, MHA(q = v_P, k = v_E, v = t_E)),  weight = `revision_weight` (100)

MHA is multi-head attention with bias-free input/output projections (`num_heads`, default 2, as the
released code): each public image looks up the elite images it resembles and reads their captions, and
the MSE pulls the public text embedding toward that revised text. The MSE is torch's mean over all
B x D elements, so the paper's weight of 100 applies unchanged; gradients reach both sides and the
attention's projections. Two documented departures from the released code: its softmax is called
without `dim` on a 3-d tensor, which normalises over heads rather than over keys; here it is over keys,
as the paper's attention describes; and there is no attention dropout (kernels.attention has none).
Under more than one process the keys and values are the elite samples of every rank (gathered with
gradient), so the revision memory is the global elite batch, as the contrastive keys are.

Offline variant (`offline_captions: FILE`): the caption of each public sample's nearest elite sample is
attached beforehand (by image-embedding similarity; cluster.offline_captions.write_offline_captions
from two embedding stores of `retina-cluster embed`), and the revision target becomes the text embedding
of that attached caption: revision = weight * MSE(t_P, t(attached caption)), over the public samples that
have one. The MHA is not used then (nearest neighbour = attention with a hard argmax).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from kernels import distributed_contrastive_loss
from kernels.attention import attention
from kernels.contrastive.distributed import gather_with_grad
from pretrain.model import auxiliary
from pretrain.objectives.base import Batch, Objective, PairedBatch, embed, merge_batches


class RevisionAttention(nn.Module):
    """Multi-head attention over a memory of (elite image, elite text) pairs: (Bq, D) -> (Bq, D)."""

    def __init__(self, dim: int, num_heads: int = 2, backend: str | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.backend = num_heads, backend
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (L, D) -> (1, H, L, D/H): one sequence of L items
        return x.view(x.shape[0], self.num_heads, -1).transpose(0, 1).unsqueeze(0)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(queries)), self._heads(self.k_proj(keys)), self._heads(self.v_proj(values))
        out = attention(q, k, v, backend=self.backend)  # softmax over the elite keys, scale 1/sqrt(D/H)
        return self.out_proj(out.squeeze(0).transpose(0, 1).reshape(queries.shape[0], -1))


def _gather(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return gather_with_grad(x)
    return x


class KeepFITV1Objective(Objective):
    name = "keepfit_v1"

    def __init__(self, revision_weight: float = 100.0, num_heads: int = 2, public_categories: bool = True,
                 offline_captions: str | None = None, backend: str | None = None,
                 attention_backend: str | None = None) -> None:
        self.revision_weight, self.num_heads = revision_weight, num_heads
        self.public_categories, self.backend, self.attention_backend = public_categories, backend, attention_backend
        self.offline: dict[str, str] | None = None
        if offline_captions is not None:
            self.offline = json.loads(Path(offline_captions).read_text(encoding="utf-8"))
        self._tokenizer: Any = None

    def auxiliary_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.offline is not None:  # the offline variant reads attached captions instead
            return {}
        return {"revision_attention": RevisionAttention(model.config.embed_dim, self.num_heads,
                                                        self.attention_backend)}

    def __call__(self, model: nn.Module, batch: Batch | PairedBatch) -> dict[str, torch.Tensor]:
        if not isinstance(batch, (tuple, list)):  # the loader may hand the (public, elite) pair over as a list
            if self.offline is None:
                raise ValueError("keepfit_v1 needs (public, elite) batches: set data.mix: paired "
                                 "(or objective.offline_captions for the offline variant)")
            batch = (batch, None)
        public, elite = batch
        n = public["image"].shape[0]
        image, text, scale = embed(model, public if elite is None else merge_batches(public, elite))
        labels = public["category_ids"] if self.public_categories else None
        terms = {"contrastive": distributed_contrastive_loss(
            image[:n], text[:n], scale, labels=labels, positives="labels" if labels is not None else "identity",
            backend=self.backend)}
        if elite is not None:
            terms["elite_contrastive"] = distributed_contrastive_loss(image[n:], text[n:], scale, backend=self.backend)
        if self.offline is None:
            revised = auxiliary(model, "revision_attention")(image[:n], _gather(image[n:]), _gather(text[n:]))
            terms["revision"] = self.revision_weight * F.mse_loss(text[:n], revised)
        else:
            terms["revision"] = self.revision_weight * self._offline_revision(model, public, text[:n])
        return terms

    def _offline_revision(self, module: nn.Module, public: Batch, text: torch.Tensor) -> torch.Tensor:
        assert self.offline is not None
        rows = [i for i, key in enumerate(public["keys"]) if key in self.offline]
        if not rows:  # keep the term (and the graph) well-defined on a batch with nothing attached
            return text.sum() * 0.0
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(module.config.text.name_or_path)
        tokens = self._tokenizer([self.offline[public["keys"][i]] for i in rows], padding="max_length",
                                 truncation=True, max_length=module.config.text.max_len, return_tensors="pt")
        attached = module.get_text_features(tokens["input_ids"].to(text.device),
                                            tokens["attention_mask"].to(text.device))
        return F.mse_loss(text[rows], attached)
