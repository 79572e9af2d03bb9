"""Load a finished (or running) training run for inference: the one loader of eval, export and embed.

    run = load_run("runs/demo")                                   # RUN_DIR/checkpoints/latest
    run = load_run("runs/demo", checkpoint="runs/demo/checkpoints/step00000060")
    run.model.get_image_features(pixels)                          # eval mode, weights of that checkpoint
    run.tokenizer, run.config (TrainConfig), run.checkpoint (tag folder), run.config_path

The model is rebuilt from the run's config.yaml as an inference model: no pretrained weights are read (the
checkpoint overwrites them), no init_from, plain attention and no activation checkpointing (the same numbers,
nothing that needs a GPU or a Triton interpreter), no training-only modules (model.auxiliary: revision
attention, momentum encoders, queues). Its state dict must then match the checkpoint's exactly, so a config
that does not describe the weights is an error naming the keys. The checkpoint is consolidated by
pretrain.consolidate (any ZeRO stage, every file checked with torch.load(weights_only=True) first): loading a
run never lets a checkpoint run code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadedRun", "RunLoadError", "inference_model_config", "load_run"]


class RunLoadError(ValueError):
    """A run folder, config or checkpoint that cannot give a model; the message names the file."""


@dataclass
class LoadedRun:
    model: Any
    """The RetinaCLIP in eval mode, on the requested device."""
    tokenizer: Any
    """The text tower's tokenizer."""
    config: Any
    """The run's TrainConfig (as saved; `offline-minilm` unresolved)."""
    checkpoint: Path
    """The checkpoint tag folder the weights come from."""
    config_path: Path
    """The config.yaml the model was built from."""


def inference_model_config(model_cfg: Any) -> Any:
    """The ModelConfig of an inference copy of a trained model (see the module doc)."""
    from pretrain.model import resolve_model_paths

    cfg = resolve_model_paths(model_cfg)
    decoder = cfg.caption_decoder
    return dataclasses.replace(
        cfg, init_from=None,
        vision=dataclasses.replace(cfg.vision, attention_backend=None, pretrained_path=None, grad_checkpointing=False),
        text=dataclasses.replace(cfg.text, attention_backend=None, grad_checkpointing=False, random_init=True),
        caption_decoder=None if decoder is None else dataclasses.replace(decoder, attention_backend=None))


def _train_config(config_path: Path) -> Any:
    from pretrain.config import load_config
    from pretrain.train import TrainConfig

    if not config_path.is_file():
        raise RunLoadError(f"{config_path}: missing (is this a run folder of retina-pretrain train?)")
    try:
        return load_config(TrainConfig, config_path)
    except ValueError as err:  # load_config's messages name the file already
        message = str(err)
        raise RunLoadError(message if str(config_path) in message else f"{config_path}: {message}") from None


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, *, config: str | Path | None = None,
             device: str | torch.device = "cpu") -> LoadedRun:
    """The model, tokenizer and config of a run (see the module doc). run_dir: the run folder, or any checkpoint
    path inside one (its checkpoints folder, a tag folder); checkpoint: which checkpoint (default: run_dir's
    latest); config: the config.yaml to build from (default: the run's)."""
    from transformers import AutoTokenizer

    from pretrain.checkpoint import find_run_config, resolve_checkpoint
    from pretrain.consolidate import load_model_state_dict
    from pretrain.model import build_model
    from pretrain.state_dicts import without_auxiliary
    from pretrain.state_dicts import StateMismatchError, load_state_strict

    try:
        where = Path(checkpoint if checkpoint is not None else run_dir)
        config_path = Path(config) if config is not None else find_run_config(where)
        tag_dir = resolve_checkpoint(where)
        train_cfg = _train_config(config_path)
        state = without_auxiliary(load_model_state_dict(tag_dir))
    except (OSError, ValueError) as err:  # CheckpointError is a ValueError
        raise RunLoadError(str(err)) from None
    model_cfg = inference_model_config(train_cfg.model)
    model = build_model(model_cfg)
    try:
        load_state_strict(model, state, f"{tag_dir} against {config_path}")
    except StateMismatchError as err:
        raise RunLoadError(str(err)) from None
    tokenizer = AutoTokenizer.from_pretrained(model_cfg.text.name_or_path)
    return LoadedRun(model=model.to(device).eval(), tokenizer=tokenizer, config=train_cfg, checkpoint=tag_dir,
                     config_path=config_path)
