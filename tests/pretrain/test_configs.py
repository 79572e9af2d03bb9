"""Every shipped config loads, validates and names a vision tower that builds and runs at its image size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.config import load_config, load_yaml
from pretrain.objectives import OBJECTIVES, build_objective
from pretrain.text_pretrain import TextPretrainConfig
from pretrain.towers import build_vision_tower
from pretrain.train import TrainConfig

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "pretrain" / "configs").glob("*.yaml"))
CONFIGS = [p for p in SHIPPED if "_text_" not in p.name]  # *_text_* configs are text-pretrain (MLM) configs
REALISTIC = {"flair_resnet50_512.yaml": ("resnet50", 512, 2048), "clip_vit_b16_224.yaml": ("vit_base_patch16_224",
             224, 768), "flair_vit_b16_512.yaml": ("vit_base_patch16_224", 512, 768)}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_into_its_config_class(path):
    cls = TextPretrainConfig if "_text_" in path.name else TrainConfig
    cfg = load_config(cls, path, ["--run.steps", "3"])
    assert isinstance(cfg, cls) and cfg.run.steps == 3
    assert cfg.run.dir == load_yaml(path)["run"]["dir"]  # the file's own value, over any base it names


def test_base_chains_of_shipped_configs_resolve():
    cfg = load_config(TrainConfig, CONFIGS[0].parent / "flair_vit_b16_512.yaml")  # base: clip_vit_b16_224.yaml
    assert (cfg.model.vision.name, cfg.model.vision.image_size, cfg.engine.zero_stage) == \
        ("vit_base_patch16_224", 512, 3)
    assert cfg.data.shuffle_buffer == 5000 and cfg.method == "flair"  # from the base / from the child


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
