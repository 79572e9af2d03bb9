"""Every shipped config loads, validates and names a vision tower that builds and runs at its image size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.config import load_config
from pretrain.towers import build_vision_tower
from pretrain.objectives import OBJECTIVES, build_objective
from pretrain.train import TrainConfig

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "pretrain" / "configs").glob("*.yaml")
                 if "_text_" not in p.name)  # *_text_* configs are text-pretrain (MLM) configs, not TrainConfigs
REALISTIC = {"flair_resnet50_512.yaml": ("resnet50", 512, 2048), "clip_vit_b16_224.yaml": ("vit_base_patch16_224",
             224, 768), "flair_vit_b16_512.yaml": ("vit_base_patch16_224", 512, 768)}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads_and_names_a_known_method(path):
    cfg = load_config(TrainConfig, path, [])
    assert cfg.method in OBJECTIVES
    build_objective(cfg.method, **cfg.objective)  # the objective accepts the config's options
    assert (cfg.model.caption_decoder is not None) == (cfg.method == "keepfit_v2")  # the decoder it trains
    assert cfg.data.image_size == cfg.model.vision.image_size
    assert cfg.data.max_text_len <= cfg.model.text.max_len


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_vision_tower_builds_and_runs(name):
    cfg = load_config(TrainConfig, CONFIGS[0].parent / name, [])
    timm_name, size, features = REALISTIC[name]
    assert (cfg.model.vision.name, cfg.model.vision.image_size) == (timm_name, size)
    assert "Bio_ClinicalBERT" in cfg.model.text.name_or_path  # the papers' text tower
    tower = build_vision_tower(cfg.model.vision).eval()
    with torch.no_grad():
        out = tower(torch.randn(1, 3, size, size))
    assert out.shape == (1, features) and torch.isfinite(out).all()
