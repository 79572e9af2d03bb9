"""Released FLAIR, KeepFIT V1 and ViLReF checkpoints as our export folders (retina-pretrain import-checkpoint).

    out = import_released("flair_resnet.pth", "exported/flair", "flair")        # text: Bio_ClinicalBERT
    out = import_released(FILE, OUT, "keepfit", text="path/to/Bio_ClinicalBERT")
    out = import_released("ViLReF_ViT.pt", OUT, "vilref", text="path/to/chinese-roberta-wwm-ext")
    model = build_model(ModelConfig(..., init_from=str(out)))   # or retina-pretrain import-hf OUT --out ft.yaml

The file is read with torch.load(weights_only=True) only (tensors, plain containers, numbers and strings); a
pickle that holds any other object is refused before anything in it runs. A training checkpoint's
`state_dict` entry is used (ViLReF saves epoch, step and optimizer beside it) and a DistributedDataParallel
`module.` prefix is dropped. pretrain.released_layouts renames the keys and says which are left out; every other
key must then match our model exactly, or the import fails listing what is missing, unexpected or of the wrong
shape.

The text tower's config (layers, width, heads, vocabulary) and tokenizer come from `text`, the BERT the
checkpoint was trained from (FLAIR and KeepFIT: emilyalsentzer/Bio_ClinicalBERT; ViLReF:
hfl/chinese-roberta-wwm-ext; a hub id needs it in the local Hugging Face cache or the network once, a folder
works offline): head counts are not visible in the weights, and the tokenizer is not in the file. The model is
built as the method defines it: FLAIR/KeepFIT with FLAIR's text pooling, ViLReF with [CLS]; multiplier clamped
to [1, 100]. FLAIR/KeepFIT's preprocessor_config.json scales pixels to [0, 1] without a mean/std (FLAIR's
LoadImage); ViLReF's normalises with CLIP's mean/std (Chinese-CLIP's transform).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from pretrain.released_layouts import FORMATS, LayoutError, map_layout

__all__ = ["FORMATS", "ReleasedCheckpointError", "import_released", "read_released_state"]

WRAPPERS = ("state_dict", "model", "model_state_dict")
METHODS = {"flair": "FLAIR (jusiro/FLAIR)", "keepfit": "KeepFIT V1 (lxirich/MM-Retinal, KeepFIT-CFP)",
           "vilref": "ViLReF (T6Yang/ViLReF)"}


ReleasedCheckpointError = LayoutError  # one error for reading, mapping and loading a released file


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
    while isinstance(data, dict) and any(isinstance(data.get(k), dict) for k in WRAPPERS):
        data = next(data[k] for k in WRAPPERS if isinstance(data.get(k), dict))
    if not isinstance(data, dict) or not data or not all(torch.is_tensor(v) for v in data.values()):
        raise ReleasedCheckpointError(f"{str(path)!r} is not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def _build(config: Any, state: dict[str, torch.Tensor], what: str) -> Any:
    """Our RetinaCLIP of `config` holding `state` (strict)."""
    from pretrain.model import build_model
    from pretrain.state_dicts import StateMismatchError, load_state_strict

    text = config.text.name_or_path
    try:
        model = build_model(config)
    except OSError as err:
        raise ReleasedCheckpointError(f"text {text!r}: cannot read its config ({str(err).splitlines()[0]}); give "
                                      "--text a local BERT folder (config.json + tokenizer)") from None
    try:
        load_state_strict(model, state, what)
    except StateMismatchError as err:
        raise ReleasedCheckpointError(str(err)) from None
    return model.eval()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _card(fmt: str, path: Path, digest: str, dropped: list[str], cfg: Any) -> str:
    left_out = "\n".join(f"- `{k}`" for k in dropped) or "- nothing"
    if fmt == "vilref":
        towers = (f"a ViT image tower (timm `{cfg.vision.name}`, {cfg.vision.model_kwargs}), the BERT text tower of "
                  f"`{cfg.text.name_or_path}` pooled at [CLS]")
        inputs = f"CLIP mean/std, {cfg.vision.image_size} px"
    else:
        towers = (f"ResNet-50 image tower (torchvision layout, run by timm), the BERT text tower of "
                  f"`{cfg.text.name_or_path}` with FLAIR's pooling (mean over all tokens of hidden states 1, 2, -1)")
        inputs = f"pixels scaled to [0, 1] (no mean/std), {cfg.vision.image_size} px square canvases"
    return f"""---
library_name: transformers
tags: [retinascale, retina, fundus, clip, vision-language, {fmt}]
---

# {path.stem} ({fmt}, imported)

The released {METHODS[fmt]} checkpoint `{path.name}` (sha256 `{digest}`), converted by `retina-pretrain
import-checkpoint --format {fmt}`: {towers}; bias-free {cfg.embed_dim}-d projection heads with L2 normalisation;
temperature multiplier clamped to [1, 100]. Inputs: {inputs}.

Left out of the file:

{left_out}
"""


def import_released(path: str | Path, out: str | Path, fmt: str, *, text: str | None = None,
                    image_size: int | None = None, overwrite: bool = False) -> Path:
    """Convert a released checkpoint into an export folder at OUT (see the module doc); ReleasedCheckpointError
    (or ExportError for OUT) when it cannot, with nothing written. text: default the format's own BERT;
    image_size: FLAIR/KeepFIT default 512, ViLReF read off the weights."""
    from transformers import AutoTokenizer

    from pretrain.hf.export import ExportError, build_hf_config, fill_full_export, write_atomically
    from pretrain.towers import resolve_text_path

    path, out = Path(path), Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} already exists (pass --overwrite to replace it)")
    mapped = map_layout(read_released_state(path), fmt, resolve_text_path(text) if text else None, image_size)
    cfg = mapped.config
    model = _build(cfg, mapped.state, f"{fmt} checkpoint {str(path)!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.text.name_or_path)
    except OSError as err:
        raise ReleasedCheckpointError(f"text {cfg.text.name_or_path!r}: no tokenizer "
                                      f"({str(err).splitlines()[0]})") from None
    state_dict = {k: v.detach().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    card = _card(fmt, path, _sha256(path), mapped.dropped, cfg)
    return write_atomically(out, lambda tmp: fill_full_export(
        tmp, model, state_dict, build_hf_config(cfg), tokenizer, card,
        what=f"{fmt} checkpoint {str(path)!r}"), overwrite)
