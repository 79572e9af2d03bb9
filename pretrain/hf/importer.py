"""`retina-pretrain import-hf DIR`: start training from an exported model, or split it for fine-tuning.

    retina-pretrain import-hf exported/demo --out runs/ft.yaml [--base pretrain/configs/demo_cpu.yaml]
    retina-pretrain train --config runs/ft.yaml --run.dir runs/ft
    retina-pretrain import-hf exported/demo --vision-only exported/demo-vision   # timm.create_model("local-dir:…")
    retina-pretrain import-hf exported/demo --text-only exported/demo-text       # AutoModel/AutoTokenizer

`--out` writes a training config: the --base config (or the defaults) with its model section replaced by one
that builds the exported architecture (timm name, image size and kwargs; a text tower of the exported
transformers config, `random_init` with the config in `config_overrides`, tokenizer from DIR) and whose
`model.init_from` is DIR, so build_model loads DIR/model.safetensors into it (pretrain.model.ModelConfig.
init_from, load_init_weights below). data.image_size and data.max_text_len follow the export. DIR is written
as given: a relative DIR is relative to where training will be started. The run starts from the exported
weights with a fresh optimizer and schedule (it is not a resume).

`--vision-only` / `--text-only` write the same folders as `export-hf --vision-only/--text-only`, from an
export instead of a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["HFImportError", "load_export", "load_init_weights", "split_export", "train_config_from_export"]

log = logging.getLogger("pretrain.hf.importer")

DECODER_PREFIX = "caption_decoder."


class HFImportError(ValueError):
    """An export folder or weights file that cannot initialise the model."""


def _weights_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise HFImportError(f"model.init_from: no weights at {str(path)!r} (expected an export folder with "
                           "model.safetensors or a .safetensors file)")
    if path.suffix != ".safetensors":
        raise HFImportError(f"model.init_from: {str(path)!r} is not a .safetensors file (nothing pickled is loaded)")
    return path


def load_init_weights(model: nn.Module, path: str | Path) -> None:
    """Load an export's (or a .safetensors file's) weights into a freshly built RetinaCLIP.

    Every parameter and buffer must be present with the same shape, and nothing else may be there; the one
    exception is `caption_decoder.*`, loaded when the model has a caption decoder and otherwise skipped with a
    warning (a KeepFIT V2 objective attaching its decoder later can load them with this function again)."""
    from safetensors.torch import load_file

    weights = load_file(str(_weights_file(path)))
    own = model.state_dict()
    has_decoder = any(k.startswith(DECODER_PREFIX) for k in own)
    if not has_decoder:
        skipped = [k for k in weights if k.startswith(DECODER_PREFIX)]
        if skipped:
            log.warning("model.init_from: %d caption_decoder tensors skipped (the model has no caption decoder)",
                        len(skipped))
        weights = {k: v for k, v in weights.items() if not k.startswith(DECODER_PREFIX)}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"model.init_from {str(path)!r} does not match the configured model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                parts.append(f"{title}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        raise HFImportError(" ".join(parts))
    model.load_state_dict(weights, strict=True)


def load_export(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as a dict, model.safetensors) of an export folder."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HFImportError(f"{str(directory)!r} is not an export folder: no readable config.json ({err})") from err
    if config.get("model_type") != "retinascale":
        raise HFImportError(f"{str(directory)!r}: config.json has model_type {config.get('model_type')!r}, "
                           "not 'retinascale'")
    return config, load_file(str(_weights_file(directory)))


def _text_overrides(text_config: dict[str, Any]) -> dict[str, Any]:
    """The exported text config as config_overrides: model_type plus what differs from its defaults."""
    from transformers import AutoConfig

    from pretrain.hf.export import _TEXT_CONFIG_DROP

    text = {k: v for k, v in text_config.items() if k not in _TEXT_CONFIG_DROP}
    model_type = text.pop("model_type", "bert")
    defaults = AutoConfig.for_model(model_type).to_dict()
    return {"model_type": model_type, **{k: v for k, v in text.items() if k not in defaults or defaults[k] != v}}


def train_config_from_export(directory: str | Path, base: str | Path | None = None) -> Any:
    """A TrainConfig (validated) that builds the exported model and initialises it from `directory`."""
    from pretrain.config import from_dict, load_yaml
    from pretrain.model import ModelConfig
    from pretrain.train import TrainConfig

    config, _ = load_export(directory)
    data = load_yaml(base) if base else {}
    model = dict(data.get("model") or {})
    vision = dict(model.get("vision") or {})
    vc = config["vision_config"]
    vision.update(name=vc["name"], image_size=int(vc["image_size"]), model_kwargs=dict(vc.get("model_kwargs") or {}),
                  pretrained_path=None)
    text = dict(model.get("text") or {})
    max_len = int(config.get("max_text_len") or text.get("max_len") or 77)
    text.update(name_or_path=str(directory), random_init=True, config_overrides=_text_overrides(config["text_config"]),
                max_len=max_len)
    model.update(vision=vision, text=text, embed_dim=int(config["embed_dim"]),
                 init_logit_scale=math.exp(float(config["logit_scale_init_value"])),
                 max_logit_scale=float(config["max_logit_scale"]), init_from=str(directory))
    if config.get("caption_decoder_config") and "caption_decoder" in {f.name for f in dataclasses.fields(ModelConfig)}:
        model["caption_decoder"] = dict(config["caption_decoder_config"])
    data["model"] = model
    data_section = dict(data.get("data") or {})
    data_section.update(image_size=int(vc["image_size"]), max_text_len=max_len)
    data["data"] = data_section
    return from_dict(TrainConfig, data, where=str(base) if base else "import-hf")


def split_export(directory: str, out: str, which: str, overwrite: bool) -> Path:
    """Write the vision or text tower of an export folder as its own folder (export-hf's --vision-only/--text-only)."""
    from transformers import AutoTokenizer

    from pretrain.hf.export import export_text_only, export_vision_only, write_atomically

    config, weights = load_export(directory)
    if which == "vision":
        return write_atomically(out, lambda tmp: export_vision_only(tmp, weights, config["vision_config"]), overwrite)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return write_atomically(out, lambda tmp: export_text_only(tmp, weights, config["text_config"], tokenizer),
                            overwrite)
