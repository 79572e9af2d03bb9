"""KeepFIT V2, stage 2: hybrid knowledge injection = global contrastive alignment + generative captioning.

    objective = build_objective("keepfit_v2", decoder_depth=2, decoder_heads=8)
    objective.attach(model)                          # adds model.caption_decoder, before DeepSpeed wraps it
    terms = objective(engine, (public, elite))       # {"contrastive": ..., "caption": ...}

- contrastive: FLAIR's label-aware loss (`category_ids`, or `multi_hot` sets) over every sample of the step,
  public and elite together (the global, concept-level knowledge);
- caption: a CaptionDecoder (causal self-attention over the caption, cross-attention to the image tower's
  patch/grid tokens, all through `kernels.attention`) trained by teacher forcing on the elite captions
  (the local, appearance-level knowledge an expert caption carries).

Design choices (the paper's method section is not reachable here, so these are ours, CoCa-style):
- image-to-text generation with a separate decoder: its own token embedding and LM head over the text
  tower's vocabulary (so stage 1's tokenizer serves both), `[CLS]` as begin- and `[SEP]` as end-of-caption;
- the decoder attends the image tokens of the SAME vision forward the contrastive term uses: one image
  pass per step, and under ZeRO-3 every vision parameter is gathered by the engine's own forward (calling
  `model.image_tokens` outside it would skip the hooks that gather timm's root parameters, e.g. pos_embed);
- which samples are captioned: the elite half of a paired batch, else the samples whose `dataset` is in
  `caption_datasets` (categorical samples only carry sampled prompt templates, not worth generating);
- the caption loss is the mean cross-entropy over this rank's real target tokens (through `[SEP]`); ranks
  are then averaged by DeepSpeed's gradient all-reduce. A rank without a captioned sample still runs the
  decoder on one row with weight 0, so every rank produces gradients for the same parameters (ZeRO's
  reduction would otherwise wait forever).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import distributed_contrastive_loss
from kernels.attention.decoder import CaptionDecoder
from pretrain.objectives.base import Batch, Objective, PairedBatch, as_batch, embed

__all__ = ["KeepFITV2Objective", "caption_loss", "image_tokens_from_features"]

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


def image_tokens_from_features(timm_model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """forward_features output -> (B, T, C) tokens, as VisionTower.forward_tokens: a CNN map flattened, a ViT's
    normed tokens without class/register tokens."""
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)
    return features[:, getattr(timm_model, "num_prefix_tokens", 0):]


class _FeatureTap:
    """Stands in for a timm model's bound `forward_features` and keeps its last output, so the image tokens
    come out of the ordinary forward instead of a second vision pass."""

    def __init__(self, forward_features: Any) -> None:
        self.forward_features = forward_features
        self.features: torch.Tensor | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.features = self.forward_features(*args, **kwargs)
        return self.features

    def pop(self) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("the image tower did not run forward_features in this forward pass")
        features, self.features = self.features, None  # do not keep the step's graph alive
        return features


def _install_tap(timm_model: nn.Module) -> _FeatureTap:
    tap = timm_model.__dict__.get("forward_features")
    if not isinstance(tap, _FeatureTap):
        tap = _FeatureTap(timm_model.forward_features)
        timm_model.forward_features = tap  # an instance attribute shadows the class method
    return tap


def _decoder_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """caption_decoder.* of a model.init_from export (folder or .safetensors), prefix removed; {} if none."""
    from safetensors import safe_open

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    prefix = "caption_decoder."
    with safe_open(str(file), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


class KeepFITV2Objective(Objective):
    name = "keepfit_v2"

    def __init__(self, decoder_dim: int | None = None, decoder_depth: int = 2, decoder_heads: int = 8,
                 decoder_mlp_ratio: float = 4.0, decoder_max_len: int | None = None,
                 attention_backend: str | None = None, use_multi_hot: bool = False,
                 caption_datasets: Sequence[str] | None = ("MM-Retinal",), backend: str | None = None) -> None:
        """decoder_dim: decoder width (null: the text tower's hidden size); decoder_depth / decoder_heads /
        decoder_mlp_ratio: its layers; decoder_max_len: longest caption it reads (null: model.text.max_len);
        attention_backend: kernels.attention backend of the decoder (null: triton on CUDA, else sdpa);
        use_multi_hot: FLAIR positives from label sets instead of category ids; caption_datasets: `dataset`
        names captioned in unpaired batches (null or empty: every sample); backend: contrastive kernel."""
        self.decoder_dim, self.decoder_depth, self.decoder_heads = decoder_dim, decoder_depth, decoder_heads
        self.decoder_mlp_ratio, self.decoder_max_len = decoder_mlp_ratio, decoder_max_len
        self.attention_backend, self.use_multi_hot, self.backend = attention_backend, use_multi_hot, backend
        self.caption_datasets = {d.lower() for d in caption_datasets or ()}

    def attach(self, model: nn.Module) -> None:
        if getattr(model, "caption_decoder", None) is None:
            text_config = model.text_model.model.config
            decoder = CaptionDecoder(
                vocab_size=text_config.vocab_size, dim=self.decoder_dim or text_config.hidden_size,
                depth=self.decoder_depth, num_heads=self.decoder_heads,
                max_len=self.decoder_max_len or model.config.text.max_len, backend=self.attention_backend,
                image_dim=model.vision_model.token_dim, mlp_ratio=self.decoder_mlp_ratio)
            decoder.num_heads = self.decoder_heads  # not visible in the weights; exporters read it here
            model.caption_decoder = decoder
            if getattr(model.config, "init_from", None):
                # build_model skipped caption_decoder.* of the export (there was no decoder yet): load them now
                weights = _decoder_init_weights(model.config.init_from)
                if weights:
                    decoder.load_state_dict(weights, strict=True)
        _install_tap(model.vision_model.model)

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
        merged = as_batch(batch)
        module = getattr(model, "module", model)  # the DeepSpeed engine or the bare model
        tap = _install_tap(module.vision_model.model)
        image, text, scale = embed(model, merged)
        features = tap.pop()
        labels = merged["multi_hot"] if self.use_multi_hot else merged["category_ids"]
        contrastive = distributed_contrastive_loss(image, text, scale, labels=labels, positives="labels",
                                                   backend=self.backend)
        rows = self.caption_rows(batch).to(features.device)
        weight = 1.0
        if rows.numel() == 0:  # see the module doc: still run the decoder, with weight 0
            rows, weight = torch.zeros(1, dtype=torch.long, device=features.device), 0.0
        tokens = image_tokens_from_features(module.vision_model.model, features)[rows]
        ids, mask = merged["input_ids"][rows], merged["attention_mask"][rows]
        caption = weight * caption_loss(module.caption_decoder, tokens, ids, mask)
        return {"contrastive": contrastive, "caption": caption}
