"""Test scaffolding shared by the test packages (not part of the library)."""

from __future__ import annotations

from pretrain.model import CaptionDecoderConfig, ModelConfig, TextConfig, VisionConfig
from pretrain.towers import offline_minilm_path


def tiny_model_config(vision: str = "vit", caption_decoder: CaptionDecoderConfig | None = None) -> ModelConfig:
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
    return ModelConfig(vision=vision_cfg, text=text_cfg, embed_dim=32, caption_decoder=caption_decoder)
