"""RetinaScale dual encoder for transformers `trust_remote_code` (written into every export by retina-pretrain).

    model = AutoModel.from_pretrained(DIR, trust_remote_code=True)
    image_embeds = model.get_image_features(pixel_values=...)                  # (B, D), unit norm
    text_embeds = model.get_text_features(input_ids=..., attention_mask=...)   # (B, D), unit norm
    out = model(input_ids=..., attention_mask=..., pixel_values=...)           # CLIP-like: logits_per_image

Self-contained on purpose: it imports only torch, transformers and timm, so an exported folder works without
the retinascale package. The parameter names are those of the training model (pretrain.model.RetinaCLIP), so
model.safetensors is the training state dict unchanged: `vision_model.model.*` (a headless timm model),
`text_model.model.*` (a transformers encoder without its pooler; [CLS] or FLAIR pooling, config.text_pooling),
`visual_projection.proj`, `text_projection.proj` (FLAIR's head: L2-normalise, Linear without bias,
L2-normalise), `logit_scale` (log of the temperature multiplier, shape (1,), clamped to [min_logit_scale,
max_logit_scale]) and, when the model was trained with KeepFIT V2's generative branch, `caption_decoder.*` (see
CaptionDecoder below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

MODEL_TYPE = "retinascale"


class RetinaScaleConfig(PretrainedConfig):
    """vision_config: {"name": timm model name, "image_size": int, "model_kwargs": {...}};
    text_config: a transformers encoder config as a dict (with its "model_type");
    caption_decoder_config: None, or CaptionDecoder's arguments (vocab_size, dim, depth, num_heads, max_len,
    image_dim, mlp_ratio);
    text_pooling: "cls" (last layer's [CLS]), "flair" (mean over all tokens of hidden_states[1], [2], [-1], then
    over the three) or "flair_masked" (the same without padding); min_logit_scale: 0 = no lower clamp."""

    model_type = MODEL_TYPE

    def __init__(self, vision_config: dict[str, Any] | None = None, text_config: dict[str, Any] | None = None,
                 embed_dim: int = 512, logit_scale_init_value: float = math.log(1 / 0.07),
                 max_logit_scale: float = 100.0, caption_decoder_config: dict[str, Any] | None = None,
                 text_pooling: str = "cls", min_logit_scale: float = 0.0, **kwargs: Any) -> None:
        self.vision_config = dict(vision_config or {"name": "resnet50", "image_size": 512, "model_kwargs": {}})
        self.text_config = dict(text_config or {"model_type": "bert"})
        self.embed_dim = embed_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.max_logit_scale = max_logit_scale
        self.min_logit_scale = min_logit_scale
        self.text_pooling = text_pooling
        self.caption_decoder_config = dict(caption_decoder_config) if caption_decoder_config else None
        super().__init__(**kwargs)

    def text_encoder_config(self) -> PretrainedConfig:
        text = dict(self.text_config)
        model_type = text.pop("model_type", "bert")
        for key in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype",
                    "_attn_implementation", "_attn_implementation_autoset"):
            text.pop(key, None)
        return AutoConfig.for_model(model_type, **text)


@dataclass
class RetinaScaleOutput(ModelOutput):
    """As transformers' CLIPOutput (the zero-shot-image-classification pipeline reads logits_per_image)."""

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    logit_scale: torch.Tensor | None = None


def create_vision_model(vision_config: dict[str, Any]) -> nn.Module:
    """The headless timm model (num_classes=0); img_size only for models that take it (ViTs)."""
    import timm

    name = vision_config["name"]
    kwargs = dict(vision_config.get("model_kwargs") or {})
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, img_size=vision_config["image_size"],
                                 **kwargs)
    except TypeError as err:  # CNNs have no img_size argument
        if "img_size" not in str(err):
            raise
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


class VisionTower(nn.Module):
    def __init__(self, vision_config: dict[str, Any]) -> None:
        super().__init__()
        self.model = create_vision_model(vision_config)
        self.num_features: int = getattr(self.model, "head_hidden_size", self.model.num_features)
        self.token_dim: int = self.model.num_features

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(pixel_values), pre_logits=True)

    def forward_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(pixel_values)
        if features.ndim == 4:
            return features.flatten(2).transpose(1, 2)
        return features[:, getattr(self.model, "num_prefix_tokens", 0):]


def flair_pool(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """hidden_states[1], [2], [-1], each averaged over tokens (padding left out when a mask is given), averaged."""
    layers = torch.stack([hidden_states[1], hidden_states[2], hidden_states[-1]])
    if attention_mask is None:
        return layers.mean(dim=2).mean(dim=0)
    weights = attention_mask.to(layers.dtype)[None, :, :, None]
    return ((layers * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1)).mean(dim=0)


class TextTower(nn.Module):
    def __init__(self, text_config: PretrainedConfig, pooling: str = "cls") -> None:
        super().__init__()
        self.model = AutoModel.from_config(text_config)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # no pooling mode reads it, as in training; the pooler was never trained
        self.pooling = pooling
        self.num_features: int = text_config.hidden_size

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "cls":
            return self.forward_tokens(input_ids, attention_mask)[:, 0]
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                            return_dict=True).hidden_states
        return flair_pool(hidden, attention_mask if self.pooling == "flair_masked" else None)


class ProjectionHead(nn.Module):
    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(F.normalize(x, dim=-1)), dim=-1)


# ----------------------------------------------------------------------------- caption decoder (KeepFIT V2)

def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, key_padding: torch.Tensor | None,
            causal: bool) -> torch.Tensor:
    q, k, v = (t.unflatten(-1, (num_heads, -1)).transpose(1, 2) for t in (q, k, v))
    mask = None
    if key_padding is not None:
        mask = key_padding.bool()[:, None, None, :]
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        tri = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        mask = tri if mask is None else mask & tri
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b, h, s, d = out.shape
    return out.transpose(1, 2).reshape(b, s, h * d)


class CaptionDecoderLayer(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the image tokens, MLP (kernels/attention/decoder.py)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, image_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.self_norm = nn.LayerNorm(dim)
        self.self_qkv = nn.Linear(dim, 3 * dim)
        self.self_proj = nn.Linear(dim, dim)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(image_dim or dim, 2 * dim)
        self.cross_proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, image_tokens: torch.Tensor, text_padding_mask: torch.Tensor | None = None,
                image_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.self_qkv(self.self_norm(x)).chunk(3, dim=-1)
        x = x + self.self_proj(_attend(q, k, v, self.num_heads, text_padding_mask, causal=True))
        k, v = self.cross_kv(image_tokens).chunk(2, dim=-1)
        q = self.cross_q(self.cross_norm(x))
        x = x + self.cross_proj(_attend(q, k, v, self.num_heads, image_padding_mask, causal=False))
        return x + self.mlp(self.mlp_norm(x))


class CaptionDecoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, depth: int, num_heads: int, max_len: int,
                 image_dim: int | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.max_len = max_len
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(max_len, dim))
        self.layers = nn.ModuleList(CaptionDecoderLayer(dim, num_heads, mlp_ratio, image_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor,
                text_padding_mask: torch.Tensor | None = None,
                image_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.max_len:
            raise ValueError(f"caption of {seq} tokens is longer than max_len={self.max_len}")
        x = self.token_embed(input_ids) + self.pos_embed[:seq]
        for layer in self.layers:
            x = layer(x, image_tokens, text_padding_mask, image_padding_mask)
        return self.lm_head(self.norm(x))


# ----------------------------------------------------------------------------- the model

class RetinaScaleModel(PreTrainedModel):
    config_class = RetinaScaleConfig
    base_model_prefix = "retinascale"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False

    def __init__(self, config: RetinaScaleConfig) -> None:
        super().__init__(config)
        self.vision_model = VisionTower(config.vision_config)
        self.text_model = TextTower(config.text_encoder_config(), config.text_pooling)
        self.visual_projection = ProjectionHead(self.vision_model.num_features, config.embed_dim)
        self.text_projection = ProjectionHead(self.text_model.num_features, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.full((1,), float(config.logit_scale_init_value)))
        self.caption_decoder = CaptionDecoder(**config.caption_decoder_config) if config.caption_decoder_config \
            else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Every weight comes from model.safetensors; the towers initialise themselves when built from scratch.
        pass

    def logit_scale_value(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(min=self.config.min_logit_scale, max=self.config.max_logit_scale)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> unit-norm (B, embed_dim)."""
        return self.visual_projection(self.vision_model(pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          **kwargs: Any) -> torch.Tensor:
        """(B, L) token ids -> unit-norm (B, embed_dim)."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model.forward_tokens(pixel_values)

    def caption_logits(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, L, vocab) of the caption decoder (exports of KeepFIT V2 models only)."""
        if self.caption_decoder is None:
            raise ValueError("this model has no caption decoder")
        return self.caption_decoder(input_ids, self.image_tokens(pixel_values), text_padding_mask=attention_mask)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs: Any) -> RetinaScaleOutput:
        """CLIP-like: embeddings of whatever is given and, with both, logits_per_image (B_img, B_txt)."""
        image_embeds = None if pixel_values is None else self.get_image_features(pixel_values)
        text_embeds = None if input_ids is None else self.get_text_features(input_ids, attention_mask)
        scale = self.logit_scale_value()
        logits_per_image = logits_per_text = None
        if image_embeds is not None and text_embeds is not None:
            logits_per_image = scale * image_embeds @ text_embeds.t()
            logits_per_text = logits_per_image.t()
        return RetinaScaleOutput(logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                                 text_embeds=text_embeds, image_embeds=image_embeds, logit_scale=scale)

