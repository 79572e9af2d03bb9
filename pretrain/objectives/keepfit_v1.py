"""KeepFIT V1 (MM-Retinal, MICCAI 2024): mixed training plus image-similarity-guided text revision.

Every step sees a public batch P (categorical, FLAIR captions) and an elite batch E (expert captions),
i.e. `data.mix: paired`. With unit embeddings (v = image, t = text) of P and E:

    contrastive        FLAIR soft-target loss on P (positives: same category; `public_categories: false`
                       for identity positives)
    elite_contrastive  CLIP loss on E (each elite image matches its own caption)
    revision           w * MSE(t_P, MHA(q = v_P, k = v_E, v = t_E))

MHA is multi-head attention with bias-free input/output projections (`num_heads`, default 2, as the released
code): each public image looks up the elite images it resembles and reads their captions, and the MSE pulls
the public text embedding toward that revised text; gradients reach both sides and the attention's projections.

Options, with what the release does (MM-Retinal KeepFIT/KeepFIT-CFP/keepfit/modeling/model.py,
`KeepFITModel.train_epoch_with_KD_loss_Atte_s` and its `MultiHeadAttention`); library default first, the
release's value is what pretrain/configs/keepfit_v1_cpu.yaml sets unless said otherwise:

    separate_forwards  false: one forward of P u E (one set of BatchNorm batch statistics over both).
                       true (release): two model calls, embed(P) then embed(E), so BatchNorm normalises each
                       stream by its own statistics (ViT/LayerNorm towers give the same numbers either way).
    revision_memory    "global": the keys/values are the elite samples of every rank (gathered with gradient),
                       as the contrastive keys are. "local" (release): each rank's own elite batch, no gather.
    revision_weight    w's base value, 100 (the paper's, at D = 512).
    revision_weight_dim  null: w = revision_weight, applied to torch's MSE as is. An integer D0 (config: 512):
                       w = revision_weight * D / D0 at the model's embedding dim D. torch's MSE is the mean over
                       all B x D elements, i.e. sum_i |t_i - r_i|^2 / (B D): the pull per unit of squared
                       distance is w / (B D), so the same w pulls 512/D times harder at a smaller D (8x at the
                       demo's 64). Scaling by D / D0 keeps w / (B D) = revision_weight / (B D0), the paper's, at
                       any D; at D = D0 nothing changes. Example: D = 64, D0 = 512: w = 100 * 64 / 512 = 12.5.
    release_attention  false: softmax over the elite keys (the attention the paper describes), no dropout.
                       true: the released module exactly: its `softmax(scores)` has no `dim` on the 3-d
                       (batch * heads, queries, keys) scores, and torch's implicit rule (dim 0 for 0-, 1- and
                       3-d tensors) normalises over dim 0 = the heads (the batch is 1); then dropout 0.5 on those
                       weights in training. With one head every weight is 1 (a plain sum over keys). Off in the
                       config too: normalising over heads is a bug of the release, kept only for parity checks.

The rest of the release's set-up lives outside the objective: 1:1 public:elite batches (`data.elite_batch_size:
null`), the elite stream unaugmented (`data.augment_elite: false`) and the start from FLAIR's weights
(`model.init_from`: a FLAIR run folder or an imported FLAIR checkpoint; the revision attention starts fresh).
README "KeepFIT V1: the release" lists every option and what still differs.

Collapse diagnostic (Objective.note_spread): `contrastive` notes the public image and text rows, `elite_contrastive`
the elite rows, and `revision` the revised text it pulls toward (text side only: its queries are the public
images noted under `contrastive`; offline, the attached captions' embeddings). Rows are this rank's.

Offline variant (`offline_captions: FILE`): the caption of each public sample's nearest elite sample is
attached beforehand (by image-embedding similarity; cluster.offline_captions.write_offline_captions
from two embedding stores of `retina-cluster embed`), and the revision target becomes the text embedding
of that attached caption: revision = w * MSE(t_P, t(attached caption)), over the public samples that
have one. The MHA is not used then (nearest neighbour = attention with a hard argmax).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

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
    """Multi-head attention over a memory of (elite image, elite text) pairs: (Bq, D) -> (Bq, D).

    release=True computes the released MultiHeadAttention instead: softmax over the heads, then `dropout` on the
    weights in training (see the module doc). Head h uses columns h*D/H .. (h+1)*D/H in both, so the weights of
    one map one to one onto the other's (q_proj = W_q, ..., out_proj = W_o)."""

    def __init__(self, dim: int, num_heads: int = 2, backend: str | None = None, release: bool = False,
                 dropout: float = 0.5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.backend, self.release, self.dropout = num_heads, backend, release, dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (L, D) -> (1, H, L, D/H): one sequence of L items
        return x.view(x.shape[0], self.num_heads, -1).transpose(0, 1).unsqueeze(0)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(queries)), self._heads(self.k_proj(keys)), self._heads(self.v_proj(values))
        if self.release:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            weights = F.dropout(scores.softmax(dim=1), self.dropout, self.training)  # dim 1 here = the heads
            out = weights @ v
        else:
            out = attention(q, k, v, backend=self.backend)  # softmax over the elite keys, scale 1/sqrt(D/H)
        return self.out_proj(out.squeeze(0).transpose(0, 1).reshape(queries.shape[0], -1))


def _gather(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return gather_with_grad(x)
    return x


class KeepFITV1Objective(Objective):
    name = "keepfit_v1"

    def __init__(self, revision_weight: float = 100.0, revision_weight_dim: int | None = None, num_heads: int = 2,
                 public_categories: bool = True, separate_forwards: bool = False,
                 revision_memory: Literal["local", "global"] = "global", release_attention: bool = False,
                 offline_captions: str | None = None, backend: str | None = None,
                 attention_backend: str | None = None) -> None:
        if revision_memory not in ("local", "global"):
            raise ValueError(f"revision_memory must be 'local' or 'global', got {revision_memory!r}")
        if revision_weight_dim is not None and revision_weight_dim < 1:
            raise ValueError(f"revision_weight_dim must be a positive embedding dim or null, got {revision_weight_dim}")
        self.revision_weight, self.revision_weight_dim, self.num_heads = revision_weight, revision_weight_dim, num_heads
        self.public_categories, self.separate_forwards = public_categories, separate_forwards
        self.revision_memory, self.release_attention = revision_memory, release_attention
        self.backend, self.attention_backend = backend, attention_backend
        self.offline: dict[str, str] | None = None
        if offline_captions is not None:
            self.offline = json.loads(Path(offline_captions).read_text(encoding="utf-8"))
        self._tokenizer: Any = None

    def auxiliary_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        if self.offline is not None:  # the offline variant reads attached captions instead
            return {}
        return {"revision_attention": RevisionAttention(model.config.embed_dim, self.num_heads,
                                                        self.attention_backend, release=self.release_attention)}

    def revision_scale(self, dim: int) -> float:
        """The weight on torch's element-mean MSE at embedding dim `dim` (see revision_weight_dim)."""
        if self.revision_weight_dim is None:
            return self.revision_weight
        return self.revision_weight * dim / self.revision_weight_dim

    def _embed(self, model: nn.Module, public: Batch, elite: Batch | None) -> tuple[torch.Tensor, ...]:
        """(image, text) of P then E, and the logit scale: one forward of P u E, or one per stream."""
        if elite is None:
            return embed(model, public)
        if not self.separate_forwards:
            return embed(model, merge_batches(public, elite))
        image_p, text_p, scale = embed(model, public)
        image_e, text_e, _ = embed(model, elite)  # the same parameter: the scale of either call
        return torch.cat([image_p, image_e]), torch.cat([text_p, text_e]), scale

    def __call__(self, model: nn.Module, batch: Batch | PairedBatch) -> dict[str, torch.Tensor]:
        if not isinstance(batch, (tuple, list)):  # the loader may hand the (public, elite) pair over as a list
            if self.offline is None:
                raise ValueError("keepfit_v1 needs (public, elite) batches: set data.mix: paired "
                                 "(or objective.offline_captions for the offline variant)")
            batch = (batch, None)
        public, elite = batch
        n = public["image"].shape[0]
        image, text, scale = self._embed(model, public, elite)
        labels = public["category_ids"] if self.public_categories else None
        terms = {"contrastive": distributed_contrastive_loss(
            image[:n], text[:n], scale, labels=labels, positives="labels" if labels is not None else "identity",
            backend=self.backend)}
        self.note_spread("contrastive", image[:n], text[:n])
        if elite is not None:
            terms["elite_contrastive"] = distributed_contrastive_loss(image[n:], text[n:], scale, backend=self.backend)
            self.note_spread("elite_contrastive", image[n:], text[n:])
        weight = self.revision_scale(text.shape[1])
        if self.offline is None:
            keys, values = image[n:], text[n:]
            if self.revision_memory == "global":
                keys, values = _gather(keys), _gather(values)
            revised = auxiliary(model, "revision_attention")(image[:n], keys, values)
            terms["revision"] = weight * F.mse_loss(text[:n], revised)
        else:
            loss, revised = self._offline_revision(model, public, text[:n])
            terms["revision"] = weight * loss
        self.note_spread("revision", None, revised)
        return terms

    def _offline_revision(self, module: nn.Module, public: Batch,
                          text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MSE of the public text to its attached captions' embeddings, those embeddings)."""
        assert self.offline is not None
        rows = [i for i, key in enumerate(public["keys"]) if key in self.offline]
        if not rows:  # keep the term (and the graph) well-defined on a batch with nothing attached
            return text.sum() * 0.0, text[:0]
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(module.config.text.name_or_path)
        tokens = self._tokenizer([self.offline[public["keys"][i]] for i in rows], padding="max_length",
                                 truncation=True, max_length=module.config.text.max_len, return_tensors="pt")
        attached = module.get_text_features(tokens["input_ids"].to(text.device),
                                            tokens["attention_mask"].to(text.device))
        return F.mse_loss(text[rows], attached), attached
