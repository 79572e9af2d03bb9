"""KeepFIT V2, stage 2: hybrid knowledge injection = global contrastive alignment + generative captioning.

    model = build_model(ModelConfig(..., caption_decoder=CaptionDecoderConfig(depth=2, num_heads=8)))
    objective = build_objective("keepfit_v2")
    terms = objective(model, (public, elite))        # {"contrastive": ..., "caption": ...}

- contrastive: FLAIR's label-aware loss (`category_ids`, or `multi_hot` sets) over every sample of the step,
  public and elite together (the global, concept-level knowledge);
- caption: the model's caption decoder (`model.caption_decoder`, pretrain.caption_decoder: causal
  self-attention over the caption, cross-attention to the image tower's patch/grid tokens, all through
  `kernels.attention`) trained by teacher forcing on the elite captions (the local, appearance-level
  knowledge an expert caption carries).

Design choices (the paper's method section is not reachable here, so these are ours, CoCa-style):
- image-to-text generation with a separate decoder: its own token embedding and LM head over the text
  tower's vocabulary (so stage 1's tokenizer serves both), `[CLS]` as begin- and `[SEP]` as end-of-caption;
- the decoder attends the image tokens of the SAME vision forward the contrastive term uses
  (`model(..., return_image_tokens=True)`): one image pass per step;
- which samples are captioned: the elite half of a paired batch, else the samples whose `dataset` is in
  `caption_datasets` (categorical samples only carry sampled prompt templates, not worth generating);
- the caption loss is the mean cross-entropy over this rank's real target tokens (through `[SEP]`); ranks
  are then averaged by DeepSpeed's gradient all-reduce. A rank without a captioned sample still runs the
  decoder on one row with weight 0, so every rank produces gradients for the same parameters (ZeRO's
  reduction would otherwise wait forever);
- collapse diagnostic (pretrain.objectives.base): `contrastive` records the image and text embeddings of every
  sample; `caption` records the image embeddings of the captioned rows only (the decoder reads their tokens,
  the embedding is their summary; a caption has no text embedding), and nothing in a step without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import distributed_contrastive_loss
from pretrain.objectives.base import Batch, Objective, PairedBatch, as_batch

__all__ = ["KeepFITV2Objective", "caption_loss"]

IGNORE = -100


def caption_loss(decoder: nn.Module, image_tokens: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """Teacher-forced next-token loss: the decoder reads ids[:, :-1] and predicts ids[:, 1:]; the mean
    cross-entropy over the real (attention_mask == 1) targets. Padding columns beyond the longest caption
    are trimmed first (they change nothing but the cost)."""
    length = max(int(attention_mask.sum(dim=1).max()), 2)
    ids, mask = input_ids[:, :length], attention_mask[:, :length]
    logits = decoder(ids[:, :-1], image_tokens, text_padding_mask=mask[:, :-1])
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE)
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return total / (targets != IGNORE).sum().clamp(min=1)


class KeepFITV2Objective(Objective):
    name = "keepfit_v2"

    def __init__(self, use_multi_hot: bool = False, caption_datasets: Sequence[str] | None = ("MM-Retinal",),
                 backend: str | None = None, **moved: Any) -> None:
        """use_multi_hot: FLAIR positives from label sets instead of category ids; caption_datasets: `dataset`
        names captioned in unpaired batches (null or empty: every sample); backend: contrastive kernel."""
        if moved:
            raise ValueError(_moved_options_message(moved))
        self.use_multi_hot, self.backend = use_multi_hot, backend
        self.caption_datasets = {d.lower() for d in caption_datasets or ()}

    def caption_rows(self, batch: Batch | PairedBatch) -> torch.Tensor:
        """Indices (into the merged batch) of the samples the decoder learns to caption."""
        if isinstance(batch, (tuple, list)):  # a (public, elite) pair; the DataLoader makes it a list
            public, elite = batch
            start = len(public["input_ids"])
            return torch.arange(start, start + len(elite["input_ids"]))
        n = len(batch["input_ids"])
        if not self.caption_datasets:
            return torch.arange(n)
        names = batch.get("dataset") or [""] * n
        return torch.tensor([i for i, d in enumerate(names) if str(d).lower() in self.caption_datasets],
                            dtype=torch.long)

    def __call__(self, model: nn.Module, batch: Batch | PairedBatch) -> dict[str, torch.Tensor]:
        decoder = getattr(model, "caption_decoder", None)
        if decoder is None:
            raise ValueError("keepfit_v2 trains the model's caption decoder: set model.caption_decoder "
                             "(e.g. {depth: 2, num_heads: 8}) in the config")
        merged = as_batch(batch)
        out = model(pixel_values=merged["image"], input_ids=merged["input_ids"],
                    attention_mask=merged["attention_mask"], return_image_tokens=True)
        labels = merged["multi_hot"] if self.use_multi_hot else merged["category_ids"]
        contrastive = distributed_contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"],
                                                   labels=labels, positives="labels", backend=self.backend)
        self.note_spread("contrastive", out["image_embeds"], out["text_embeds"])
        tokens = out["image_tokens"]
        rows = self.caption_rows(batch).to(tokens.device)
        weight = 1.0
        if rows.numel() == 0:  # see the module doc: still run the decoder, with weight 0
            rows, weight = torch.zeros(1, dtype=torch.long, device=tokens.device), 0.0
        else:  # see the module doc: the captioned images' embeddings, no text side
            self.note_spread("caption", out["image_embeds"][rows], None)
        ids, mask = merged["input_ids"][rows], merged["attention_mask"][rows]
        caption = weight * caption_loss(decoder, tokens[rows], ids, mask)
        return {"contrastive": contrastive, "caption": caption}


# objective option -> model.caption_decoder field, for configs written before the decoder became a model option
MOVED_OPTIONS = {"decoder_dim": "dim", "decoder_depth": "depth", "decoder_heads": "num_heads",
                 "decoder_mlp_ratio": "mlp_ratio", "decoder_max_len": "max_len",
                 "attention_backend": "attention_backend"}


def _moved_options_message(moved: dict[str, Any]) -> str:
    unknown = sorted(set(moved) - set(MOVED_OPTIONS))
    if unknown:
        return f"keepfit_v2: unknown objective option(s) {unknown}"
    section = ", ".join(f"{MOVED_OPTIONS[k]}: {v}" for k, v in moved.items())
    return (f"keepfit_v2: {sorted(moved)} moved from the objective to the model (the caption decoder is a model "
            f"option now): write `model: {{caption_decoder: {{{section}}}}}` instead of under `objective:`")
