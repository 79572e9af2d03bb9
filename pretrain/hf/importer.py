"""`retina-pretrain import-hf DIR`: start training from an exported model, or split it for fine-tuning.

    retina-pretrain import-hf exported/demo --out runs/ft.yaml [--base pretrain/configs/demo_cpu.yaml]
    retina-pretrain train --config runs/ft.yaml --run.dir runs/ft
    retina-pretrain import-hf exported/demo --vision-only exported/demo-vision   # timm.create_model("local-dir:…")
    retina-pretrain import-hf exported/demo --text-only exported/demo-text       # AutoModel/AutoTokenizer

`--out` writes a training config: the --base config (or the defaults) with its model section replaced by one
that builds the exported architecture (timm name, image size and kwargs; a text tower of the exported
transformers config, `random_init` with the config in `config_overrides`, tokenizer from DIR) and whose
`model.init_from` is DIR, so build_model loads DIR/model.safetensors into it (pretrain.model.ModelConfig.
init_from, pretrain.init_weights.load_init_weights). data.image_size and data.max_text_len follow the export.
DIR is written as given: a relative DIR is relative to where training will be started. The run starts from the
exported weights with a fresh optimizer and schedule (it is not a resume).

`--vision-only` / `--text-only` write the same folders as `export-hf --vision-only/--text-only`, from an
export instead of a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from pretrain.init_weights import HFImportError, read_weights, weights_file

__all__ = ["HFImportError", "load_export", "split_export", "train_config_from_export"]

log = logging.getLogger("pretrain.hf.importer")


def load_export(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json as a dict, model.safetensors) of an export folder."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HFImportError(f"{str(directory)!r} is not an export folder: no readable config.json ({err})") from err
    if config.get("model_type") != "retinascale":
        raise HFImportError(f"{str(directory)!r}: config.json has model_type {config.get('model_type')!r}, "
                           "not 'retinascale'")
    return config, read_weights(weights_file(directory))


def _text_overrides(text_config: dict[str, Any]) -> dict[str, Any]:
    """The exported text config as config_overrides: model_type plus what differs from its defaults."""
    from transformers import AutoConfig

    from pretrain.hf.export import TEXT_CONFIG_DROP

    text = {k: v for k, v in text_config.items() if k not in TEXT_CONFIG_DROP}
    model_type = text.pop("model_type", "bert")
    defaults = AutoConfig.for_model(model_type).to_dict()
    return {"model_type": model_type, **{k: v for k, v in text.items() if k not in defaults or defaults[k] != v}}


def train_config_from_export(directory: str | Path, base: str | Path | None = None) -> Any:
    """A TrainConfig (validated) that builds the exported model and initialises it from `directory`."""
    from pretrain.config import from_dict, load_yaml
    from pretrain.train import TrainConfig

    config, _ = load_export(directory)
    data = load_yaml(base) if base else {}
    model = dict(data.get("model") or {})
    vision = dict(model.get("vision") or {})
    vc = config["vision_config"]
    vision.update(name=vc["name"], image_size=int(vc["image_size"]), model_kwargs=dict(vc.get("model_kwargs") or {}),
                  pixel_scaling=str(vc.get("pixel_scaling", "clip")), pretrained_path=None)
    text = dict(model.get("text") or {})
    max_len = int(config.get("max_text_len") or text.get("max_len") or 77)
    text.update(name_or_path=str(directory), random_init=True, config_overrides=_text_overrides(config["text_config"]),
                max_len=max_len, pooling=str(config.get("text_pooling", "cls")))
    model.update(vision=vision, text=text, embed_dim=int(config["embed_dim"]),
                 init_logit_scale=math.exp(float(config["logit_scale_init_value"])),
                 max_logit_scale=float(config["max_logit_scale"]),
                 min_logit_scale=float(config.get("min_logit_scale", 0.0)), init_from=str(directory))
    decoder = config.get("caption_decoder_config")
    if decoder:  # the export's full decoder shape; what the towers already fix (vocab, image width) stays out
        model["caption_decoder"] = {k: decoder[k] for k in ("dim", "depth", "num_heads", "mlp_ratio", "max_len")}
    data["model"] = model
    data_section = dict(data.get("data") or {})
    data_section.update(image_size=int(vc["image_size"]), max_text_len=max_len)
    data["data"] = data_section
    return from_dict(TrainConfig, data, where=str(base) if base else "import-hf")


def split_export(directory: str, out: str, which: str, overwrite: bool) -> Path:
    """Write the vision or text tower of an export folder as its own folder (as export-hf --vision_only)."""
    from transformers import AutoTokenizer

    from pretrain.hf.export import export_text_only, export_vision_only, write_atomically

    config, weights = load_export(directory)
    if which == "vision":
        return write_atomically(out, lambda tmp: export_vision_only(tmp, weights, config["vision_config"]), overwrite)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    pooling = str(config.get("text_pooling", "cls"))
    return write_atomically(out, lambda tmp: export_text_only(tmp, weights, config["text_config"], tokenizer, pooling),
                            overwrite)
