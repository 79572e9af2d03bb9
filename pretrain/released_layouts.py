"""The key layouts of released retinal CLIP checkpoints, renamed onto RetinaCLIP, with the config they describe.

    mapped = map_layout(state_dict, "flair", text="emilyalsentzer/Bio_ClinicalBERT")
    mapped.state, mapped.dropped, mapped.config          # our names, what was left out, the ModelConfig

FLAIR (flair/modeling/model.py FLAIRModel, VisionModel, TextModel, ProjectionLayer) and KeepFIT V1
(KeepFIT-CFP keepfit/modeling/model.py KeepFITModel: the same towers and heads):

    vision_model.model.*                                   vision_model.model.*   torchvision resnet50 (fc =
                                                                                  Identity) = timm resnet50 names
    vision_model.projection_head_vision.projection.weight  visual_projection.proj.weight
    text_model.model.*                                     text_model.model.*     a transformers BertModel
    text_model.projection_head_text.projection.weight      text_projection.proj.weight
    logit_scale  (shape ())                                logit_scale  (shape (1,))

ViLReF (ViLReF/clip/model.py CLIP, Chinese-CLIP's; ViT image towers only: its ResNet-50 is CLIP's ModifiedResNet
with attention pooling, which our towers do not have):

    visual.conv1 / class_embedding / positional_embedding  vision_model.model.patch_embed.proj / cls_token / pos_embed
    visual.ln_pre, visual.ln_post                          vision_model.model.norm_pre, vision_model.model.norm
    visual.transformer.resblocks.N.{ln_1, attn.in_proj_*,  vision_model.model.blocks.N.{norm1, attn.qkv.*,
      attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}             attn.proj, norm2, mlp.fc1, mlp.fc2}
    visual.proj (width, embed)                             visual_projection.proj.weight (transposed)
    bert.*                                                 text_model.model.*     (its BERT has HF's names)
    text_projection (hidden, embed)                        text_projection.proj.weight (transposed)

(timm vision_transformer.py _convert_openai_clip does the same renaming for OpenAI CLIP weights.) The image tower
is timm's vit_base_patch16_clip_quickgelu_224 (pre-norm, QuickGELU, class-token pooling after the final norm)
with width, depth, heads (width / 64, Chinese-CLIP's head width) and patch size read off the weights. CLIP's
`x @ proj` then L2-normalise equals our head (L2-normalise, bias-free Linear, L2-normalise): a positive scalar
factor does not survive the last normalisation.

Left out: BERT poolers (never read by these text features), `position_ids`/`token_type_ids` index buffers of
older transformers, KeepFIT's `attention.W_{q,k,v,o}` (training-only revision attention) and the `atte_TD2KD` /
`atte_KD2TD` fusion attentions of its ablations. Keys of no layout pass through unchanged, so the strict load
names them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FORMATS", "LayoutError", "MappedCheckpoint", "default_text", "map_layout"]

FORMATS = ("flair", "keepfit", "vilref")
DEFAULT_TEXT = {"flair": "emilyalsentzer/Bio_ClinicalBERT", "keepfit": "emilyalsentzer/Bio_ClinicalBERT",
                "vilref": "hfl/chinese-roberta-wwm-ext"}
FLAIR_RENAMED = {
    "vision_model.projection_head_vision.projection.weight": "visual_projection.proj.weight",
    "text_model.projection_head_text.projection.weight": "text_projection.proj.weight",
}
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
FLAIR_DROPPED = ("text_model.model.pooler.", *(f"text_model.model.{b}" for b in BUFFERS))
KEEPFIT_DROPPED = ("attention.", "atte_TD2KD.", "atte_KD2TD.")
VILREF_DROPPED = ("bert.pooler.", *(f"bert.{b}" for b in BUFFERS))
VILREF_BLOCK = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
                "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
VILREF_VISUAL = {"conv1.weight": "patch_embed.proj.weight", "ln_pre": "norm_pre", "ln_post": "norm"}
VILREF_VISION = "vit_base_patch16_clip_quickgelu_224"
CHINESE_CLIP_HEAD_WIDTH = 64


class LayoutError(ValueError):
    """A released checkpoint that cannot be read or does not fit the model; nothing was written."""


@dataclass
class MappedCheckpoint:
    state: dict[str, torch.Tensor]
    """The weights under our names (fp32)."""
    dropped: list[str]
    """Names left out (see the module doc)."""
    config: Any
    """The ModelConfig the weights describe."""


def default_text(fmt: str) -> str:
    """The text model a format's releases were trained from (its config and tokenizer)."""
    return DEFAULT_TEXT[fmt]


def _float(value: torch.Tensor) -> torch.Tensor:
    return value.float() if value.is_floating_point() else value


def _require(state: dict[str, torch.Tensor], keys: tuple[str, ...], fmt: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise LayoutError(f"not a {fmt} checkpoint: no {', '.join(missing)}")


def _max_len(mapped: dict[str, torch.Tensor], wanted: int = 77) -> int:
    """`wanted` tokens (77: CLIP's caption length), or fewer when the text model has fewer positions."""
    positions = mapped.get("text_model.model.embeddings.position_embeddings.weight")
    return wanted if positions is None else min(wanted, int(positions.shape[0]))


def _model_config(vision: Any, text: Any, embed_dim: int, logit_scale: torch.Tensor) -> Any:
    from pretrain.model import ModelConfig

    # FLAIR, KeepFIT and Chinese-CLIP all clamp the log-scale to [0, 4.6052]: multiplier in [1, 100]
    return ModelConfig(vision=vision, text=text, embed_dim=embed_dim, init_logit_scale=math.exp(logit_scale.item()),
                       max_logit_scale=100.0, min_logit_scale=1.0)


def _map_flair(state: dict[str, torch.Tensor], fmt: str, text: str, image_size: int | None) -> MappedCheckpoint:
    from pretrain.model import TextConfig, VisionConfig

    _require(state, ("vision_model.projection_head_vision.projection.weight", "logit_scale"), fmt)
    dropped_prefixes = FLAIR_DROPPED + (KEEPFIT_DROPPED if fmt == "keepfit" else ())
    mapped, dropped = {}, []
    for key, value in state.items():
        if key.startswith(dropped_prefixes):
            dropped.append(key)
        else:
            mapped[FLAIR_RENAMED.get(key, key)] = _float(value)
    mapped["logit_scale"] = mapped["logit_scale"].reshape(1)  # ours is (1,): DeepSpeed breaks on 0-d parameters
    config = _model_config(VisionConfig(name="resnet50", image_size=image_size or 512, pixel_scaling="unit"),
                           TextConfig(name_or_path=text, max_len=_max_len(mapped), random_init=True, pooling="flair"),
                           int(mapped["visual_projection.proj.weight"].shape[0]), mapped["logit_scale"])
    return MappedCheckpoint(mapped, sorted(dropped), config)


def _vilref_vision_key(key: str) -> str:
    name = key[len("visual."):]
    block = re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", name)
    if block:
        index, rest = block.groups()
        for old, new in VILREF_BLOCK.items():
            if rest.startswith(old):
                return f"vision_model.model.blocks.{index}.{new}{rest[len(old):]}"
        return key
    for old, new in VILREF_VISUAL.items():
        if name.startswith(old):
            return f"vision_model.model.{new}{name[len(old):]}"
    return key


def _vilref_vision_config(state: dict[str, torch.Tensor], image_size: int | None) -> Any:
    from pretrain.model import VisionConfig

    width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    if image_size is not None and image_size != grid * patch:
        raise LayoutError(f"the ViLReF position embeddings fix the image size at {grid * patch}, not {image_size}")
    depth = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    return VisionConfig(name=VILREF_VISION, image_size=grid * patch, model_kwargs={
        "depth": depth, "embed_dim": int(width), "num_heads": int(width) // CHINESE_CLIP_HEAD_WIDTH,
        "patch_size": int(patch)})


def _map_vilref(state: dict[str, torch.Tensor], text: str, image_size: int | None) -> MappedCheckpoint:
    from pretrain.model import TextConfig

    if "visual.attnpool.c_proj.weight" in state:
        raise LayoutError("ViLReF's ResNet-50 (CLIP's ModifiedResNet with attention pooling) is not supported: "
                          "only its ViT checkpoints")
    _require(state, ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
                     "logit_scale"), "vilref")
    mapped, dropped = {}, []
    for key, value in state.items():
        if key.startswith(VILREF_DROPPED):
            dropped.append(key)
        elif key == "visual.class_embedding":
            mapped["vision_model.model.cls_token"] = _float(value).reshape(1, 1, -1)
        elif key == "visual.positional_embedding":
            mapped["vision_model.model.pos_embed"] = _float(value).unsqueeze(0)
        elif key in ("visual.proj", "text_projection"):
            name = "visual_projection" if key == "visual.proj" else "text_projection"
            mapped[f"{name}.proj.weight"] = _float(value).t().contiguous()
        elif key.startswith("visual."):
            mapped[_vilref_vision_key(key)] = _float(value)
        elif key.startswith("bert."):
            mapped[f"text_model.model.{key[len('bert.'):]}"] = _float(value)
        else:
            mapped[key] = _float(value)
    mapped["logit_scale"] = mapped["logit_scale"].reshape(1)
    config = _model_config(_vilref_vision_config(state, image_size),
                           TextConfig(name_or_path=text, max_len=_max_len(mapped, 100), random_init=True, pooling="cls"),
                           int(state["visual.proj"].shape[1]), mapped["logit_scale"])
    return MappedCheckpoint(mapped, sorted(dropped), config)


def map_layout(state: dict[str, torch.Tensor], fmt: str, text: str | None = None,
               image_size: int | None = None) -> MappedCheckpoint:
    """A released state dict of format `fmt` under our names, with its ModelConfig (see the module doc). text: the
    BERT it was trained from (default_text(fmt)); image_size: FLAIR/KeepFIT default 512, ViLReF read off the
    weights."""
    if fmt not in FORMATS:
        raise LayoutError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    text = text or default_text(fmt)
    if fmt == "vilref":
        return _map_vilref(state, text, image_size)
    return _map_flair(state, fmt, text, image_size)
