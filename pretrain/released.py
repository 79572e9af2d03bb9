"""Released FLAIR and KeepFIT V1 checkpoints as our export folders (retina-pretrain import-checkpoint).

    out = import_released("flair_resnet.pth", "exported/flair", "flair")        # text: Bio_ClinicalBERT
    out = import_released(FILE, OUT, "keepfit", text="path/to/Bio_ClinicalBERT")
    model = build_model(ModelConfig(..., init_from=str(out)))   # or retina-pretrain import-hf OUT --out ft.yaml

The file is read with torch.load(weights_only=True) only (tensors, plain containers and numbers); a pickle
that holds any other object is refused before anything in it runs. The keys follow FLAIR flair/modeling/model.py
(FLAIRModel, VisionModel, TextModel, ProjectionLayer) and KeepFIT-CFP keepfit/modeling/model.py (KeepFITModel,
the same towers and heads):

    vision_model.model.*                                   vision_model.model.*   torchvision resnet50, fc =
                                                                                  Identity; timm's resnet50 has
                                                                                  the same names and features
    vision_model.projection_head_vision.projection.weight  visual_projection.proj.weight
    text_model.model.*                                     text_model.model.*     a transformers BertModel
    text_model.projection_head_text.projection.weight      text_projection.proj.weight
    logit_scale  (shape ())                                logit_scale  (shape (1,))

Left out: the BERT pooler (`text_model.model.pooler.*`: FLAIR's TextModel.forward never reads it, and our
text tower has none) and the `position_ids` / `token_type_ids` index buffers older transformers saved (fixed
ranges, rebuilt by the model). KeepFIT's `attention.W_{q,k,v,o}.weight` (its training-only revision attention,
our auxiliary revision_attention) and the `atte_TD2KD` / `atte_KD2TD` fusion attentions of its ablations are
left out too: no export carries training-only modules. Every other key must match our model exactly, or the
import fails listing what is missing, unexpected or of the wrong shape.

The text tower's config (layers, width, heads, vocabulary) and tokenizer come from `text`, the BERT the
checkpoint was trained from (FLAIR and KeepFIT: emilyalsentzer/Bio_ClinicalBERT; a hub id needs it in the local
Hugging Face cache or the network once, a folder works offline): head counts are not visible in the weights,
and the tokenizer is not in the file. The model is built FLAIR-exact: text.pooling flair, multiplier clamped to
[1, 100], 512-d heads without bias, image size 512; preprocessor_config.json scales pixels to [0, 1] without a
mean/std (FLAIR's LoadImage).
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMATS", "FLAIR_TEXT", "ReleasedCheckpointError", "import_released", "map_released_state",
           "read_released_state", "released_model_config"]

FORMATS = ("flair", "keepfit")
FLAIR_TEXT = "emilyalsentzer/Bio_ClinicalBERT"
RENAMED = {
    "vision_model.projection_head_vision.projection.weight": "visual_projection.proj.weight",
    "text_model.projection_head_text.projection.weight": "text_projection.proj.weight",
}
DROPPED = {  # prefix -> why; what every format leaves out
    "text_model.model.pooler.": "BERT pooler (FLAIR pools hidden states)",
    "text_model.model.embeddings.position_ids": "index buffer (rebuilt)",
    "text_model.model.embeddings.token_type_ids": "index buffer (rebuilt)",
}
KEEPFIT_DROPPED = {
    "attention.": "KeepFIT revision attention (training only)",
    "atte_TD2KD.": "KeepFIT fusion attention (training only)",
    "atte_KD2TD.": "KeepFIT fusion attention (training only)",
}
WRAPPERS = ("state_dict", "model", "model_state_dict")


class ReleasedCheckpointError(ValueError):
    """A released checkpoint that cannot be read or does not fit the model; nothing was written."""


def _load_error(path: Path, err: Exception) -> str:
    """One line for a failed torch.load(weights_only=True): a refused object, or a file that is not a checkpoint."""
    message = str(err)
    refused = re.search(r"GLOBAL (\S+) was not an allowed global", message)
    if refused:
        return (f"{str(path)!r} holds pickled objects, not only tensors ({refused.group(1)}): refused (only "
                "torch.load(weights_only=True) is used; nothing in it was run)")
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    first = detail.group(1).strip() if detail else f"{type(err).__name__}: {(message.strip().splitlines() or [''])[0]}"
    return f"{str(path)!r} is not a readable torch checkpoint ({first})"


def read_released_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a released .pth/.pt file: torch.load(weights_only=True), unwrapped from a
    {"state_dict" | "model": ...} wrapper and a DistributedDataParallel `module.` prefix."""
    path = Path(path)
    if not path.is_file():
        raise ReleasedCheckpointError(f"no checkpoint file at {str(path)!r}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged or foreign file can fail anywhere in the unpickler
        raise ReleasedCheckpointError(_load_error(path, err)) from None
    while isinstance(data, dict) and len(data) == 1 and next(iter(data)) in WRAPPERS:
        data = next(iter(data.values()))
    if not isinstance(data, dict) or not data or not all(torch.is_tensor(v) for v in data.values()):
        raise ReleasedCheckpointError(f"{str(path)!r} is not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def map_released_state(state: dict[str, torch.Tensor], fmt: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the names left out) of a FLAIR- or KeepFIT-layout state dict; see the module doc.
    Keys of neither layout pass through unchanged, so a strict load names them."""
    if fmt not in FORMATS:
        raise ReleasedCheckpointError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    dropped_prefixes = tuple(DROPPED) + (tuple(KEEPFIT_DROPPED) if fmt == "keepfit" else ())
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key.startswith(dropped_prefixes):
            dropped.append(key)
        elif key == "logit_scale" and value.numel() == 1:
            mapped[key] = value.reshape(1).float()  # ours is (1,): DeepSpeed breaks on 0-d parameters
        else:
            mapped[RENAMED.get(key, key)] = value
    return mapped, sorted(dropped)


def released_model_config(text: str, embed_dim: int, logit_scale: float, image_size: int = 512) -> Any:
    """The FLAIR-exact ModelConfig of a released ResNet-50 checkpoint (see the module doc)."""
    from pretrain.model import ModelConfig, TextConfig, VisionConfig

    return ModelConfig(
        vision=VisionConfig(name="resnet50", image_size=image_size),
        text=TextConfig(name_or_path=text, max_len=77, random_init=True, pooling="flair"),
        embed_dim=embed_dim, init_logit_scale=math.exp(logit_scale), max_logit_scale=100.0, min_logit_scale=1.0)


def _build(mapped: dict[str, torch.Tensor], text: str, image_size: int, what: str) -> Any:
    """Our RetinaCLIP holding the mapped weights (strict)."""
    from pretrain.model import build_model
    from pretrain.state_dicts import StateMismatchError, load_state_strict

    head = mapped.get("visual_projection.proj.weight")
    scale = mapped.get("logit_scale")
    if head is None or scale is None:
        missing = [k for k, v in (("vision_model.projection_head_vision.projection.weight", head),
                                  ("logit_scale", scale)) if v is None]
        raise ReleasedCheckpointError(f"{what}: not a FLAIR/KeepFIT checkpoint (no {', '.join(missing)})")
    try:
        model = build_model(released_model_config(text, int(head.shape[0]), float(scale.item()), image_size))
    except OSError as err:
        raise ReleasedCheckpointError(f"text {text!r}: cannot read its config ({str(err).splitlines()[0]}); give "
                                      "--text a local BERT folder (config.json + tokenizer)") from None
    try:
        load_state_strict(model, mapped, what)
    except StateMismatchError as err:
        raise ReleasedCheckpointError(str(err)) from None
    return model.eval()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _card(fmt: str, path: Path, digest: str, dropped: list[str], cfg: Any) -> str:
    method = {"flair": "FLAIR (jusiro/FLAIR)", "keepfit": "KeepFIT V1 (lxirich/MM-Retinal, KeepFIT-CFP)"}[fmt]
    left_out = "\n".join(f"- `{k}`" for k in dropped) or "- nothing"
    return f"""---
library_name: transformers
tags: [retinascale, retina, fundus, clip, vision-language, {fmt}]
---

# {path.stem} ({fmt}, imported)

The released {method} checkpoint `{path.name}` (sha256 `{digest}`), converted by `retina-pretrain
import-checkpoint --format {fmt}`: ResNet-50 image tower (torchvision layout, run by timm), the BERT text tower of
`{cfg.text.name_or_path}` with FLAIR's pooling (mean over all tokens of hidden states 1, 2 and -1), bias-free
{cfg.embed_dim}-d projection heads with L2 normalisation, temperature multiplier clamped to [1, 100].
Inputs: pixels scaled to [0, 1] (no mean/std), {cfg.vision.image_size} px square canvases.

Left out of the file:

{left_out}
"""


def import_released(path: str | Path, out: str | Path, fmt: str, *, text: str = FLAIR_TEXT, image_size: int = 512,
                    overwrite: bool = False) -> Path:
    """Convert a released checkpoint into an export folder at OUT (see the module doc); ReleasedCheckpointError
    (or ExportError for OUT) when it cannot, with nothing written."""
    from transformers import AutoTokenizer

    from pretrain.hf.export import ExportError, build_hf_config, fill_full_export, image_processor, write_atomically
    from pretrain.towers import resolve_text_path

    path, out = Path(path), Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    mapped, dropped = map_released_state(read_released_state(path), fmt)
    text = resolve_text_path(text)
    model = _build(mapped, text, image_size, f"{fmt} checkpoint {str(path)!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(text)
    except OSError as err:
        raise ReleasedCheckpointError(f"text {text!r}: no tokenizer ({str(err).splitlines()[0]})") from None
    state_dict = {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    hf_config = build_hf_config(model.config)
    card = _card(fmt, path, _sha256(path), dropped, model.config)
    return write_atomically(out, lambda tmp: fill_full_export(
        tmp, model, state_dict, hf_config, tokenizer, card, processor=image_processor(image_size, normalize=False),
        what=f"{fmt} checkpoint {str(path)!r}"), overwrite)
