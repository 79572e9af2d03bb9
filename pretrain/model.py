"""The dual-encoder model: a timm image tower, a transformers text tower, FLAIR projection heads and, as an
option, a caption decoder (KeepFIT V2's generative branch; part of the model as CoCa's is in open_clip).

    model = build_model(ModelConfig())                       # ResNet-50 + Bio_ClinicalBERT, FLAIR's defaults
    out = model(pixel_values, input_ids, attention_mask)     # dict(image_embeds, text_embeds, logit_scale)
    out = model(..., return_image_tokens=True)               # + image_tokens (B, T, C) from the same image pass
    loss = contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])

Names follow transformers' CLIPModel (`vision_model`, `text_model`, `visual_projection`, `text_projection`,
`logit_scale`, `get_image_features`, `get_text_features`) so checkpoints read like CLIP's. The model knows
nothing about parallelism; the trainer wraps it.

Training-only modules an objective needs (KeepFIT V1's revision attention, ViLReF's momentum encoders and
queues) are declared by the objective (`Objective.auxiliary_modules`) and added here by `add_auxiliary`, always
under `model.auxiliary.<name>`: DeepSpeed optimises, partitions and checkpoints them with the model, and every
consumer of a finished run (eval, export, embed) drops the one prefix AUXILIARY_PREFIX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.caption_decoder import CaptionDecoderConfig, build_caption_decoder
from pretrain.state_dicts import AUXILIARY_PREFIX, without_auxiliary
from pretrain.towers import (TextConfig, TextTower, VisionConfig, VisionTower, build_text_tower, build_vision_tower,
                             resolve_text_path)

__all__ = [
    "AUXILIARY_PREFIX",
    "CaptionDecoderConfig",
    "ModelConfig",
    "ProjectionHead",
    "RetinaCLIP",
    "TextConfig",
    "VisionConfig",
    "add_auxiliary",
    "auxiliary",
    "build_model",
    "resolve_model_paths",
    "without_auxiliary",
]



@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    """Image tower."""
    text: TextConfig = field(default_factory=TextConfig)
    """Text tower."""
    embed_dim: int = 512
    """Dimension of the shared image-text embedding space."""
    init_logit_scale: float = 1 / 0.07
    """Initial temperature multiplier (CLIP's 1/0.07); stored as its log."""
    max_logit_scale: float = 100.0
    """Upper clamp of the multiplier, as CLIP and FLAIR do, so the softmax cannot collapse."""
    min_logit_scale: float = 0.0
    """Lower clamp of the multiplier; 0 = none. FLAIR and KeepFIT clamp the log-scale to [0, 4.6052], i.e. the
    multiplier to [1, 100] (FLAIR flair/modeling/model.py FLAIRModel.compute_logits): set 1.0 for that range."""
    caption_decoder: CaptionDecoderConfig | None = None
    """A caption decoder cross-attending to the image tokens (KeepFIT V2 trains it); null: none."""
    init_from: str | None = None
    """An exported HF directory (retina-pretrain export-hf), a .safetensors file, or a training run of ours (its
    folder, checkpoints folder or one tag folder: the latest checkpoint, consolidated) whose weights initialise
    the model after it is built (strict: every tensor must match; caption_decoder.* is loaded only if the model
    has a caption decoder; a run's auxiliary.* modules are left out, so the objective's start fresh)."""


class ProjectionHead(nn.Module):
    """FLAIR's projection: L2-normalise the tower feature, project without bias, L2-normalise again."""

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(F.normalize(x, dim=-1)), dim=-1)


class RetinaCLIP(nn.Module):
    def __init__(self, cfg: ModelConfig, vision_model: VisionTower, text_model: TextTower) -> None:
        super().__init__()
        self.config = cfg
        self.vision_model = vision_model
        self.text_model = text_model
        self.visual_projection = ProjectionHead(vision_model.num_features, cfg.embed_dim)
        self.text_projection = ProjectionHead(text_model.num_features, cfg.embed_dim)
        # shape (1,), not 0-d: DeepSpeed's broadcast, clipping and ZeRO-3 partitioning break on 0-d parameters
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(cfg.init_logit_scale)))
        self.max_logit_scale = cfg.max_logit_scale
        self.min_logit_scale = cfg.min_logit_scale
        self.caption_decoder = None
        if cfg.caption_decoder is not None:
            text_config = text_model.model.config
            self.caption_decoder = build_caption_decoder(
                cfg.caption_decoder, vocab_size=text_config.vocab_size, text_dim=text_config.hidden_size,
                text_max_len=cfg.text.max_len, image_dim=vision_model.token_dim)

    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) clamped to [min_logit_scale, max_logit_scale]. Clamping the value, not the parameter
        (FLAIR clamps the parameter in place), means no gradient pushes it further once clamped."""
        return self.logit_scale.exp().clamp(min=self.min_logit_scale, max=self.max_logit_scale)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> unit-norm (B, embed_dim)."""
        return self.visual_projection(self.vision_model(pixel_values))

    def get_image_backbone_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the image tower's pooled feature before visual_projection (2048-d for ResNet-50),
        not normalised: what FLAIR's linear probe reads (its project_features=False, norm_features=False)."""
        return self.vision_model(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> unit-norm (B, embed_dim)."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, C) spatial tokens of the image tower, for a caption decoder to cross-attend to."""
        return self.vision_model.forward_tokens(pixel_values)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_image_tokens: bool = False) -> dict[str, torch.Tensor]:
        """Unit image and text embeddings and the logit scale; with return_image_tokens also the image tower's
        tokens from the same pass (what the caption decoder reads), so no second image forward is needed."""
        out: dict[str, torch.Tensor] = {}
        if return_image_tokens:
            pooled, out["image_tokens"] = self.vision_model.forward_with_tokens(pixel_values)
        else:
            pooled = self.vision_model(pixel_values)
        out["image_embeds"] = self.visual_projection(pooled)
        out["text_embeds"] = self.get_text_features(input_ids, attention_mask)
        out["logit_scale"] = self.logit_scale_value()
        return out


def resolve_model_paths(cfg: ModelConfig) -> ModelConfig:
    """The config with `offline-minilm` replaced by the local folder (what the towers and tokenizer load)."""
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text,
                                                             name_or_path=resolve_text_path(cfg.text.name_or_path)))


def build_model(cfg: ModelConfig) -> RetinaCLIP:
    model = RetinaCLIP(cfg, build_vision_tower(cfg.vision), build_text_tower(cfg.text))
    if cfg.init_from:
        from pretrain.init_weights import load_init_weights

        load_init_weights(model, cfg.init_from)
    return model


# ----------------------------------------------------------------------------- training-only modules


def add_auxiliary(model: nn.Module, modules: Mapping[str, nn.Module]) -> None:
    """Add an objective's training-only modules under model.auxiliary (before the engine wraps the model)."""
    if not modules:
        return
    if not hasattr(model, "auxiliary"):
        model.auxiliary = nn.ModuleDict()
    for name, module in modules.items():
        model.auxiliary[name] = module


def auxiliary(model: nn.Module, name: str) -> nn.Module:
    """model.auxiliary[name], or a clear error naming what is missing."""
    modules = getattr(model, "auxiliary", None)
    if modules is None or name not in modules:
        raise RuntimeError(f"the model has no auxiliary module {name!r}: the objective declares it in "
                           "auxiliary_modules() and add_auxiliary(model, ...) adds it before training")
    return modules[name]

